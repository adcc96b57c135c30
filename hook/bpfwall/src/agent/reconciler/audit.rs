//! Host-wide audit mode (daemon flag `--audit`): every endpoint gets
//! `EP_AUDIT`, as a `bpfwall.mode=audit` label gives it one container.
//! Kept beside the compile (labels-policy stays pure and knows only the
//! label); an endpoint in error stays closed, as with the label.

use labels_policy::datapath_abi as abi;
use labels_policy::Compiled;

/// Sets `EP_AUDIT` on every endpoint and report whose policy is not in error.
pub(super) fn audit_everything(compiled: &mut Compiled) {
    let in_error = abi::EP_ERROR_INGRESS | abi::EP_ERROR_EGRESS;
    for ep in compiled.endpoints.values_mut() {
        if ep.flags & in_error == 0 {
            ep.flags |= abi::EP_AUDIT;
        }
    }
    for report in &mut compiled.containers {
        if report.flags & in_error == 0 {
            report.flags |= abi::EP_AUDIT;
        }
    }
}
