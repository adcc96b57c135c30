//! A read-only reader of bolt (bbolt) database files: enough to find a
//! value under nested buckets, as in podman's database. No writes, no
//! freelist, no cursors.
//!
//! The layout (bbolt's `page.go`, `node.go`, `bucket.go`; little endian):
//! - every page starts with a 16-byte header: id u64, flags u16 (branch 1,
//!   leaf 2, meta 4, freelist 16), count u16, overflow u32 (pages that
//!   follow it);
//! - pages 0 and 1 are metas (after the header): magic u32 `0xED0CDAED`,
//!   version u32 (2), page size u32, flags u32, the root bucket (root page
//!   u64, sequence u64), freelist u64, high-water page u64, txid u64, and
//!   an FNV-1a 64 checksum of the 56 bytes before it. The valid meta with
//!   the highest txid is the database;
//! - a branch page's elements (16 bytes each) are pos u32, key size u32,
//!   child page u64; a leaf's are flags u32 (1: a bucket), pos u32, key size
//!   u32, value size u32. `pos` counts from the element itself; keys are
//!   sorted;
//! - a bucket value is its root page u64 and sequence u64; root 0 means an
//!   inline bucket, whose page follows in the value.
//!
//! The file is read whole under a shared `flock`, as bbolt's read-only
//! opens do, so a writer's transaction is never seen half done; the lock is
//! waited for at most a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const BUCKET_LEAF: u32 = 0x01;
const BUCKET_HEADER: usize = 16;
/// Nested pages deeper than this are a corrupt file, not a database.
const MAX_DEPTH: usize = 64;

/// Errors reading a bolt file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// The file could not be opened, locked or read.
    #[error("cannot {what} {path}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A writer held the file longer than we wait.
    #[error("{path} is locked by a writer for more than {waited:?}")]
    Locked {
        /// The file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The bytes are not a bolt database.
    #[error("not a bolt database (or damaged): {what}")]
    Corrupt {
        /// What does not hold.
        what: String,
    },
}

fn corrupt(what: impl Into<String>) -> BoltError {
    BoltError::Corrupt { what: what.into() }
}

/// A bolt database, read whole.
#[derive(Debug)]
pub struct BoltFile {
    data: Vec<u8>,
    page_size: usize,
    root: u64,
}

/// Where a bucket's tree starts: a page of the file, or inline bytes.
#[derive(Debug, Clone, Copy)]
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

/// A bucket of a [`BoltFile`].
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    file: &'a BoltFile,
    root: Root<'a>,
}

/// What a key holds.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Bytes.
    Bytes(&'a [u8]),
    /// A nested bucket.
    Bucket(Bucket<'a>),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads `path` whole under a shared lock, waiting at most `deadline` for
/// a writer to finish.
fn read_locked(path: &Path, deadline: Duration) -> Result<Vec<u8>, BoltError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::Read as _;
    let io = |what| {
        move |source| BoltError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = std::fs::File::open(path).map_err(io("open"))?;
    let started = Instant::now();
    let mut file = file;
    let mut locked = loop {
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(lock) => break lock,
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                if started.elapsed() >= deadline {
                    return Err(BoltError::Locked {
                        path: path.to_path_buf(),
                        waited: deadline,
                    });
                }
                file = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, errno)) => return Err(io("lock")(std::io::Error::from(errno))),
        }
    };
    let mut data = Vec::new();
    locked.read_to_end(&mut data).map_err(io("read"))?;
    Ok(data)
}

impl BoltFile {
    /// Reads the database at `path` (waiting at most `deadline` for a writer).
    pub fn open(path: &Path, deadline: Duration) -> Result<BoltFile, BoltError> {
        Self::from_bytes(read_locked(path, deadline)?)
    }

    /// A database from its bytes.
    pub fn from_bytes(data: Vec<u8>) -> Result<BoltFile, BoltError> {
        let page_size =
            u32_at(&data, PAGE_HEADER + 8).ok_or_else(|| corrupt("too short"))? as usize;
        if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(corrupt(format!("page size {page_size}")));
        }
        let meta = |page: usize| -> Option<(u64, u64)> {
            let at = page * page_size + PAGE_HEADER;
            let m = data.get(at..at + 64)?;
            if u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION {
                return None;
            }
            if fnv1a64(&m[..56]) != u64_at(m, 56)? {
                return None;
            }
            Some((u64_at(m, 48)?, u64_at(m, 16)?))
        };
        let (_, root) = [meta(0), meta(1)]
            .into_iter()
            .flatten()
            .max_by_key(|(txid, _)| *txid)
            .ok_or_else(|| corrupt("no valid meta page"))?;
        Ok(BoltFile {
            data,
            page_size,
            root,
        })
    }

    /// The root bucket (holding the top-level buckets).
    pub fn root(&self) -> Bucket<'_> {
        Bucket {
            file: self,
            root: Root::Page(self.root),
        }
    }

    /// The bytes of page `id` (with its overflow pages).
    fn page(&self, id: u64) -> Result<&[u8], BoltError> {
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .ok_or_else(|| corrupt(format!("page {id}")))?;
        let overflow = u32_at(&self.data, start + 12)
            .ok_or_else(|| corrupt(format!("page {id} past the end")))?;
        let end = start + (overflow as usize + 1) * self.page_size;
        Ok(&self.data[start..end.min(self.data.len())])
    }
}

impl<'a> Bucket<'a> {
    /// What `key` holds in this bucket.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value<'a>>, BoltError> {
        let mut page: &'a [u8] = match self.root {
            Root::Page(id) => self.file.page(id)?,
            Root::Inline(bytes) => bytes,
        };
        for _ in 0..MAX_DEPTH {
            let flags = u16_at(page, 8).ok_or_else(|| corrupt("short page"))?;
            let count = usize::from(u16_at(page, 10).ok_or_else(|| corrupt("short page"))?);
            let element = |i: usize| PAGE_HEADER + i * ELEMENT;
            let key_of = |i: usize, pos_at: usize, size_at: usize| -> Result<&'a [u8], BoltError> {
                let e = element(i);
                let pos =
                    u32_at(page, e + pos_at).ok_or_else(|| corrupt("short element"))? as usize;
                let size =
                    u32_at(page, e + size_at).ok_or_else(|| corrupt("short element"))? as usize;
                page.get(e + pos..e + pos + size)
                    .ok_or_else(|| corrupt("key past its page"))
            };
            if flags & BRANCH != 0 {
                // The last child whose first key is <= key.
                let mut child = None;
                for i in 0..count {
                    if key_of(i, 0, 4)? <= key {
                        child = Some(i);
                    } else {
                        break;
                    }
                }
                let i = child.unwrap_or(0);
                if count == 0 {
                    return Ok(None);
                }
                let id = u64_at(page, element(i) + 8).ok_or_else(|| corrupt("short element"))?;
                page = self.file.page(id)?;
                continue;
            }
            if flags & LEAF == 0 {
                return Err(corrupt(format!("page flags {flags:#x} in a bucket")));
            }
            for i in 0..count {
                if key_of(i, 4, 8)? != key {
                    continue;
                }
                let e = element(i);
                let eflags = u32_at(page, e).ok_or_else(|| corrupt("short element"))?;
                let pos = u32_at(page, e + 4).ok_or_else(|| corrupt("short element"))? as usize;
                let ksize = u32_at(page, e + 8).ok_or_else(|| corrupt("short element"))? as usize;
                let vsize = u32_at(page, e + 12).ok_or_else(|| corrupt("short element"))? as usize;
                let start = e + pos + ksize;
                let value = page
                    .get(start..start + vsize)
                    .ok_or_else(|| corrupt("value past its page"))?;
                if eflags & BUCKET_LEAF == 0 {
                    return Ok(Some(Value::Bytes(value)));
                }
                let root = u64_at(value, 0).ok_or_else(|| corrupt("short bucket header"))?;
                let root = if root == 0 {
                    Root::Inline(&value[BUCKET_HEADER.min(value.len())..])
                } else {
                    Root::Page(root)
                };
                return Ok(Some(Value::Bucket(Bucket {
                    file: self.file,
                    root,
                })));
            }
            return Ok(None);
        }
        Err(corrupt("pages nest too deep"))
    }

    /// The nested bucket at `key`, if there is one.
    pub fn bucket(&self, key: &[u8]) -> Result<Option<Bucket<'a>>, BoltError> {
        Ok(match self.get(key)? {
            Some(Value::Bucket(b)) => Some(b),
            _ => None,
        })
    }

    /// The bytes at `key`, if it holds bytes.
    pub fn bytes(&self, key: &[u8]) -> Result<Option<&'a [u8]>, BoltError> {
        Ok(match self.get(key)? {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        })
    }
}

/// Builds bolt files for tests: one leaf page per bucket, nested buckets
/// inline or on pages of their own.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// What a test bucket holds.
    pub enum Item {
        /// Bytes.
        Bytes(Vec<u8>),
        /// A nested bucket (inline when `inline`).
        Bucket {
            items: Vec<(Vec<u8>, Item)>,
            inline: bool,
        },
    }

    fn leaf(items: &[(Vec<u8>, Item)], pages: &mut Vec<Vec<u8>>, page_size: usize) -> Vec<u8> {
        let mut sorted: Vec<&(Vec<u8>, Item)> = items.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut values = Vec::new();
        for (_, item) in &sorted {
            values.push(match item {
                Item::Bytes(b) => (0u32, b.clone()),
                Item::Bucket { items, inline } => {
                    let page = leaf(items, pages, page_size);
                    let mut v = Vec::new();
                    if *inline {
                        v.extend_from_slice(&0u64.to_le_bytes());
                        v.extend_from_slice(&0u64.to_le_bytes());
                        v.extend_from_slice(&page);
                    } else {
                        let id = pages.len() as u64;
                        let mut p = page;
                        p[..8].copy_from_slice(&id.to_le_bytes());
                        p.resize(page_size, 0);
                        pages.push(p);
                        v.extend_from_slice(&id.to_le_bytes());
                        v.extend_from_slice(&0u64.to_le_bytes());
                    }
                    (BUCKET_LEAF, v)
                }
            });
        }
        let mut page = vec![0u8; PAGE_HEADER + ELEMENT * sorted.len()];
        page[8..10].copy_from_slice(&LEAF.to_le_bytes());
        page[10..12].copy_from_slice(&(sorted.len() as u16).to_le_bytes());
        for (i, ((key, _), (flags, value))) in sorted.iter().zip(&values).enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            let pos = (page.len() - e) as u32;
            page[e..e + 4].copy_from_slice(&flags.to_le_bytes());
            page[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
            page[e + 8..e + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[e + 12..e + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(key);
            page.extend_from_slice(value);
        }
        page
    }

    /// A database whose root bucket holds `items`; the second meta is the
    /// newer one unless `stale_second_meta`.
    pub fn build(items: &[(Vec<u8>, Item)]) -> Vec<u8> {
        let page_size = 4096;
        // Pages 0, 1: metas; 2: freelist; 3: the root's leaf.
        let mut pages = vec![vec![0u8; page_size]; 4];
        let root = leaf(items, &mut pages, page_size);
        assert!(root.len() <= page_size, "test root leaf too big");
        pages[3][..root.len()].copy_from_slice(&root);
        pages[3][..8].copy_from_slice(&3u64.to_le_bytes());
        for (m, txid) in [(0usize, 1u64), (1, 2)] {
            let mut meta = Vec::new();
            meta.extend_from_slice(&MAGIC.to_le_bytes());
            meta.extend_from_slice(&VERSION.to_le_bytes());
            meta.extend_from_slice(&(page_size as u32).to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes());
            meta.extend_from_slice(&3u64.to_le_bytes());
            meta.extend_from_slice(&0u64.to_le_bytes());
            meta.extend_from_slice(&2u64.to_le_bytes());
            meta.extend_from_slice(&(pages.len() as u64).to_le_bytes());
            meta.extend_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&meta);
            meta.extend_from_slice(&sum.to_le_bytes());
            pages[m][8..10].copy_from_slice(&4u16.to_le_bytes());
            pages[m][PAGE_HEADER..PAGE_HEADER + meta.len()].copy_from_slice(&meta);
        }
        pages.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{build, Item};
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn finds_values_in_nested_inline_and_paged_buckets() {
        let data = build(&[
            (
                b("ctr"),
                Item::Bucket {
                    inline: false,
                    items: vec![
                        (
                            b("abc"),
                            Item::Bucket {
                                inline: true,
                                items: vec![(b("config"), Item::Bytes(b("{\"name\":\"web\"}")))],
                            },
                        ),
                        (b("zzz"), Item::Bytes(b("plain"))),
                    ],
                },
            ),
            (b("names"), Item::Bytes(b("x"))),
        ]);
        let db = BoltFile::from_bytes(data).unwrap();
        let ctr = db.root().bucket(b"ctr").unwrap().unwrap();
        let abc = ctr.bucket(b"abc").unwrap().unwrap();
        assert_eq!(
            abc.bytes(b"config").unwrap(),
            Some(&b"{\"name\":\"web\"}"[..])
        );
        assert_eq!(ctr.bytes(b"zzz").unwrap(), Some(&b"plain"[..]));
        assert!(ctr.bucket(b"nope").unwrap().is_none());
        assert!(
            db.root().bytes(b"ctr").unwrap().is_none(),
            "a bucket is not bytes"
        );
    }

    #[test]
    fn refuses_what_is_not_a_database() {
        assert!(BoltFile::from_bytes(vec![0; 100]).is_err());
        let mut data = build(&[(b("k"), Item::Bytes(b("v")))]);
        // Break both metas' checksums.
        data[PAGE_HEADER + 60] ^= 1;
        data[4096 + PAGE_HEADER + 60] ^= 1;
        let e = BoltFile::from_bytes(data).unwrap_err();
        assert!(e.to_string().contains("no valid meta page"), "{e}");
    }
}
