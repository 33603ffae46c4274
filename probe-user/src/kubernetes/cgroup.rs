//! The container a process runs in, from its `/proc/<pid>/cgroup`: the key
//! that joins a process seen by the kernel to a pod known to the API server.
//!
//! Runtimes name a container's cgroup after its id, with the pod's UID in a
//! parent cgroup, in two layouts: cgroupfs (`/kubepods/burstable/pod<uid>/<id>`,
//! `/docker/<id>`) and systemd (`kubepods-burstable-pod<uid_with_underscores>.slice/
//! cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`). Both
//! cgroup v1 (one line per hierarchy) and v2 (`0::<path>`) are read.
use std::fmt;

/// A container id: 32 bytes, written by runtimes as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContainerId([u8; 32]);

impl ContainerId {
    /// Parses exactly 64 hex digits, either case.
    pub fn from_hex(hex: &[u8]) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        for (byte, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
        }
        Some(ContainerId(id))
    }

    /// Parses a pod status's `containerID`: `<runtime>://<64 hex digits>`.
    pub fn from_status(container_id: &str) -> Option<Self> {
        let (_runtime, hex) = container_id.split_once("://")?;
        Self::from_hex(hex.as_bytes())
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Where a process runs, as its cgroup says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: ContainerId,
    /// The pod's UID (with dashes), when a parent cgroup names it: absent
    /// for containers outside Kubernetes (plain Docker).
    pub pod_uid: Option<String>,
}

/// Prefixes a runtime puts before the id in a systemd scope's name.
const SCOPE_PREFIXES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

/// The container of the process whose `/proc/<pid>/cgroup` is `content`;
/// None for processes outside containers (host services, the kernel's threads).
pub fn container_of(content: &[u8]) -> Option<Container> {
    let content = std::str::from_utf8(content).ok()?;
    content.lines().find_map(|line| {
        // hierarchy-id:controllers:path; the path may itself hold colons.
        let mut fields = line.splitn(3, ':');
        let path = fields.nth(2)?;
        container_in_path(path)
    })
}

fn container_in_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').collect();
    // The innermost container cgroup: a container may nest its own below it
    // (systemd in a container makes `init.scope` there).
    let (at, id) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| Some((i, container_segment(s)?)))?;
    let pod_uid = segments[..at].iter().rev().find_map(|s| pod_segment(s));
    Some(Container { id, pod_uid })
}

/// `<id>`, or `<runtime>-<id>.scope`. CRI-O's monitor (`crio-conmon-<id>.scope`)
/// runs outside the container and is not one.
fn container_segment(segment: &str) -> Option<ContainerId> {
    let name = match segment.strip_suffix(".scope") {
        Some(scope) => SCOPE_PREFIXES
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix))?,
        None => segment,
    };
    ContainerId::from_hex(name.as_bytes())
}

/// `pod<uid>` (cgroupfs) or `…-pod<uid with underscores>.slice` (systemd,
/// where a dash would mean a level of nesting).
fn pod_segment(segment: &str) -> Option<String> {
    let uid = match segment.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + "-pod".len()..],
        None => segment.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    let uuid_like = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    uuid_like.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a0c1e9b2d4e5f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";
    const UID: &str = "6b1f0e2a-4c3d-4e5f-9a8b-7c6d5e4f3a2b";
    const UID_: &str = "6b1f0e2a_4c3d_4e5f_9a8b_7c6d5e4f3a2b";

    fn id() -> ContainerId {
        ContainerId::from_hex(ID.as_bytes()).unwrap()
    }

    #[test]
    fn container_ids_from_cgroup_files() {
        let in_pod = Some(Container {
            id: id(),
            pod_uid: Some(UID.to_owned()),
        });
        let no_pod = Some(Container {
            id: id(),
            pod_uid: None,
        });
        let cases: Vec<(String, Option<Container>)> = vec![
            // containerd, cgroup v2, systemd driver
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                in_pod.clone(),
            ),
            // containerd, guaranteed QoS class (no QoS slice)
            (
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                in_pod.clone(),
            ),
            // containerd, cgroup v1, cgroupfs driver: every hierarchy says it
            (
                format!(
                    "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
                     11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
                     1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n\
                     0::/\n"
                ),
                in_pod.clone(),
            ),
            // besteffort, cgroupfs, cgroup v2
            (
                format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"),
                in_pod.clone(),
            ),
            // CRI-O, systemd driver
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope\n"),
                in_pod.clone(),
            ),
            // CRI-O's conmon runs beside the container, not in it
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope\n"),
                None,
            ),
            // kind / k3d: kubelet in a container, seen from a cgroup namespace
            (
                format!("0::/../../kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                in_pod.clone(),
            ),
            // systemd inside the container nests below the container's cgroup
            (
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope\n"),
                in_pod.clone(),
            ),
            // Docker (dockershim-era kubelet) with the systemd driver
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope\n"),
                in_pod.clone(),
            ),
            // plain Docker: cgroupfs v1, then systemd v2
            (format!("4:memory:/docker/{ID}\n0::/\n"), no_pod.clone()),
            (format!("0::/system.slice/docker-{ID}.scope\n"), no_pod.clone()),
            // upper-case hex is the same id
            (format!("0::/docker/{}\n", ID.to_uppercase()), no_pod),
            // not in a container
            ("0::/system.slice/containerd.service\n".to_owned(), None),
            ("0::/user.slice/user-1000.slice/session-3.scope\n".to_owned(), None),
            ("0::/init.scope\n".to_owned(), None),
            ("12:pids:/\n11:cpu,cpuacct:/\n0::/\n".to_owned(), None),
            // a pod's cgroup itself (the pause process's parent), no container
            (format!("0::/kubepods/burstable/pod{UID}\n"), None),
            // almost ids: 63 digits, a non-hex digit
            (format!("0::/docker/{}\n", &ID[1..]), None),
            (format!("0::/docker/{}g\n", &ID[1..]), None),
            (String::new(), None),
        ];
        for (content, want) in cases {
            assert_eq!(container_of(content.as_bytes()), want, "{content}");
        }
        assert_eq!(container_of(b"\xff\xfe"), None, "not UTF-8");
    }

    #[test]
    fn container_ids_from_pod_status() {
        let cases = [
            (format!("containerd://{ID}"), Some(id())),
            (format!("cri-o://{ID}"), Some(id())),
            (format!("docker://{ID}"), Some(id())),
            (ID.to_owned(), None),
            ("containerd://".to_owned(), None),
            (String::new(), None),
        ];
        for (status, want) in cases {
            assert_eq!(ContainerId::from_status(&status), want, "{status}");
        }
        assert_eq!(format!("{:?}", id()), ID);
    }
}
