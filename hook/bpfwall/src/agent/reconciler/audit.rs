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

#[cfg(test)]
mod tests {
    use labels_policy::{compile, Attachment, CompileInput, ContainerInput, IdentityAllocator};

    use super::*;

    #[test]
    fn every_endpoint_audits_but_one_in_error_stays_closed() {
        let c = |name: &str, rule: &str, ep: u32| ContainerInput {
            name: name.into(),
            labels: [
                ("id".to_string(), name.to_string()),
                ("bpfwall.ingress".to_string(), rule.to_string()),
            ]
            .into_iter()
            .collect(),
            addresses: vec![format!("10.0.0.{ep}").parse().unwrap()],
            network: Default::default(),
            started: 0,
            attachment: Some(Attachment {
                cgroup_id: u64::from(ep),
                endpoint_id: ep,
            }),
        };
        let inputs = [
            c("good", "allow from id=x port 80/tcp", 1),
            c("bad", "allow form id=x", 2),
        ];
        let mut compiled = compile(
            CompileInput {
                containers: &inputs,
                host_addresses: &[],
                host_policies: &[],
            },
            &mut IdentityAllocator::new(),
        )
        .unwrap();
        audit_everything(&mut compiled);
        let flags = |id: u32| {
            compiled
                .endpoints
                .values()
                .find(|e| e.endpoint_id == id)
                .unwrap()
                .flags
        };
        assert_ne!(flags(1) & abi::EP_AUDIT, 0);
        assert_eq!(flags(2) & abi::EP_AUDIT, 0);
        assert_ne!(flags(2) & abi::EP_ERROR_INGRESS, 0);
        assert_ne!(compiled.containers[0].flags & abi::EP_AUDIT, 0);
    }
}
