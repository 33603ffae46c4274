//! Which program a process runs, from /proc: the `service_name` label of
//! aggregation (the workload's name for a process in a Kubernetes pod, whose
//! `k8s_*` labels are found here too), and the process scans behind the
//! `--exe` and `--pid` filters.
//!
//! The /proc root is a parameter so tests run on a fake tree, and so a
//! containerised sonde can read the host's /proc mounted elsewhere.
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};
use regex::Regex;

use crate::event::ConnOpen;
use crate::kubernetes::cgroup::{container_of, Container};
use crate::kubernetes::{Lookup, PodLabels, Pods};
use crate::route::{Namer, ServiceId};

/// Service name of a process whose program could not be found out.
pub const UNKNOWN: &str = "unknown";
/// Longest service name in bytes.
pub const MAX_NAME_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot list processes in {path}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A procfs mount.
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    /// Basename of the program `tgid` runs (the `/proc/<tgid>/exe` link),
    /// made a valid, bounded label value. None for kernel threads, processes
    /// gone, and links sonde may not read.
    pub fn exe_name(&self, tgid: u32) -> Option<String> {
        let target = fs::read_link(self.root.join(tgid.to_string()).join("exe")).ok()?;
        let path = target.as_os_str().as_bytes();
        // The kernel appends this to the link of a program replaced or removed
        // since it started, which is routine during upgrades.
        let path = path.strip_suffix(b" (deleted)").unwrap_or(path);
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        label_value(&String::from_utf8_lossy(base))
    }

    /// The container `tgid` runs in, from `/proc/<tgid>/cgroup`; None
    /// outside containers and for processes gone.
    pub fn container(&self, tgid: u32) -> Option<Container> {
        let cgroup = fs::read(self.root.join(tgid.to_string()).join("cgroup")).ok()?;
        container_of(&cgroup)
    }

    /// Whether process `tgid` still exists.
    pub fn exists(&self, tgid: u32) -> bool {
        self.root.join(tgid.to_string()).exists()
    }

    /// Whether `tgid` runs a program whose basename matches `exe` (unanchored:
    /// write `^nginx$` for an exact name).
    pub fn matches(&self, tgid: u32, exe: &Regex) -> bool {
        self.exe_name(tgid).is_some_and(|name| exe.is_match(&name))
    }

    /// The running processes that [`matches`](Self::matches) `exe`, ascending.
    pub fn matching(&self, exe: &Regex) -> Result<Vec<u32>, ProcError> {
        Ok(self
            .tgids()?
            .into_iter()
            .filter(|&t| self.matches(t, exe))
            .collect())
    }

    /// `roots` and every running descendant of them, ascending: processes
    /// forked before sonde started are not followed by the kernel's fork hook,
    /// and they are often the ones doing the work (nginx and gunicorn workers).
    pub fn with_descendants(&self, roots: &[u32]) -> Result<Vec<u32>, ProcError> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for tgid in self.tgids()? {
            if let Some(parent) = self.parent(tgid) {
                children.entry(parent).or_default().push(tgid);
            }
        }
        let mut found: HashSet<u32> = roots.iter().copied().collect();
        let mut pending = roots.to_vec();
        while let Some(tgid) = pending.pop() {
            for &child in children.get(&tgid).into_iter().flatten() {
                if found.insert(child) {
                    pending.push(child);
                }
            }
        }
        let mut all: Vec<u32> = found.into_iter().collect();
        all.sort_unstable();
        Ok(all)
    }

    /// Running processes, ascending. Threads are not listed at the top of /proc.
    fn tgids(&self) -> Result<Vec<u32>, ProcError> {
        let entries = fs::read_dir(&self.root).map_err(|source| ProcError::List {
            path: self.root.clone(),
            source,
        })?;
        let mut tgids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tgids.sort_unstable();
        Ok(tgids)
    }

    /// The parent's tgid, field 4 of `/proc/<tgid>/stat`. The command name
    /// before it may hold spaces and parentheses, so fields are counted from
    /// its closing parenthesis, the last one in the line.
    fn parent(&self, tgid: u32) -> Option<u32> {
        let stat = fs::read(self.root.join(tgid.to_string()).join("stat")).ok()?;
        let after_comm = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
        let mut fields = after_comm.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let _state = fields.next()?;
        std::str::from_utf8(fields.next()?).ok()?.parse().ok()
    }
}

/// `name` without control characters, cut to [`MAX_NAME_LEN`] bytes at a
/// character boundary; None if nothing is left.
fn label_value(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len().min(MAX_NAME_LEN));
    for c in name.chars() {
        let c = if c.is_control() { '_' } else { c };
        if out.len() + c.len_utf8() > MAX_NAME_LEN {
            break;
        }
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

/// Service names by tgid, looked up once per process.
///
/// Call [`forget`](Self::forget) when a process exits or execs, so a reused
/// tgid or a new program is looked up again.
pub struct Names {
    proc: ProcFs,
    capacity: usize,
    by_tgid: HashMap<u32, Named>,
    /// Present when pod metadata is on.
    pods: Option<Pods>,
}

/// What is known of one process.
struct Named {
    /// Its `service_name`: its pod's workload, else `exe`.
    name: String,
    exe: String,
    pod: Option<Arc<PodLabels>>,
    /// The id aggregation's `Namer` gave `name` and `pod`, once asked:
    /// admission is permanent, so it holds as long as they do.
    service: Option<ServiceId>,
    /// A container whose pod, or whose name in it, the index did not know
    /// when last asked: asked again when the index has changed since.
    unresolved: Option<(Container, u64)>,
}

impl Named {
    fn new(exe: String, container: Option<Container>) -> Self {
        Named {
            name: exe.clone(),
            exe,
            pod: None,
            service: None,
            // A generation the index never reaches: the first question is asked.
            unresolved: container.map(|c| (c, u64::MAX)),
        }
    }

    /// Looks the container up again if the index changed since last time.
    /// A process keeps its labels once its container is found.
    fn resolve(&mut self, pods: &Pods) {
        let Some((container, asked_at)) = &mut self.unresolved else {
            return;
        };
        let generation = pods.generation();
        if generation == *asked_at {
            return;
        }
        *asked_at = generation;
        let lookup = pods.lookup(container);
        if let Some(labels) = lookup.labels() {
            if self.pod.as_ref() != Some(labels) {
                self.name = labels.service_name().to_owned();
                self.pod = Some(labels.clone());
                self.service = None;
            }
        }
        if matches!(lookup, Lookup::Container(_)) {
            self.unresolved = None;
        }
    }
}

impl Names {
    /// Processes remembered by default, far more than a node runs that talk HTTP.
    pub const DEFAULT_CAPACITY: usize = 16_384;

    pub fn new(proc: ProcFs, capacity: usize) -> Self {
        Names {
            proc,
            capacity: capacity.max(1),
            by_tgid: HashMap::new(),
            pods: None,
        }
    }

    /// Names processes in a pod after their workload, and gives them the
    /// pod's labels.
    pub fn with_pods(self, pods: Pods) -> Self {
        Names {
            pods: Some(pods),
            ..self
        }
    }

    /// Names the process of a new connection while it surely runs, falling
    /// back to the task's `comm` when /proc has no answer.
    pub fn on_conn_open(&mut self, open: &ConnOpen) {
        self.named(open.tgid, || label_value(&open.comm));
    }

    /// The `service_name` of `tgid`: the basename of its program, else its
    /// `comm` as seen at a connection open, else [`UNKNOWN`].
    pub fn service_name(&mut self, tgid: u32) -> &str {
        &self.named(tgid, || None).name
    }

    /// The basename of the program `tgid` runs (else its `comm`, else
    /// [`UNKNOWN`]), whatever its `service_name`.
    pub fn exe_name(&mut self, tgid: u32) -> &str {
        &self.named(tgid, || None).exe
    }

    /// The `k8s_*` labels of `tgid`, when it runs in a known pod.
    pub fn pod(&mut self, tgid: u32) -> Option<&Arc<PodLabels>> {
        self.named(tgid, || None).pod.as_ref()
    }

    /// The id `namer` gives the `service_name` and pod of `tgid`, asked once
    /// per process: aggregation needs it for every request.
    pub fn service_id(&mut self, tgid: u32, namer: &mut Namer) -> ServiceId {
        let named = self.named(tgid, || None);
        *named
            .service
            .get_or_insert_with(|| namer.service(&named.name, named.pod.as_ref()))
    }

    pub fn forget(&mut self, tgid: u32) {
        self.by_tgid.remove(&tgid);
    }

    /// The entry of `tgid`, made from /proc, else `fallback`, else
    /// [`UNKNOWN`] if there is none. One lookup when there is.
    fn named(&mut self, tgid: u32, fallback: impl FnOnce() -> Option<String>) -> &mut Named {
        if self.by_tgid.len() >= self.capacity && !self.by_tgid.contains_key(&tgid) {
            // Exits are normally forgotten, so being full means exit events
            // were lost: any entry is as likely stale as another.
            if let Some(&victim) = self.by_tgid.keys().next() {
                self.by_tgid.remove(&victim);
            }
        }
        let Names {
            proc,
            by_tgid,
            pods,
            ..
        } = self;
        let named = by_tgid.entry(tgid).or_insert_with(|| {
            let exe = proc
                .exe_name(tgid)
                .or_else(fallback)
                .unwrap_or_else(|| UNKNOWN.to_owned());
            Named::new(exe, pods.as_ref().and_then(|_| proc.container(tgid)))
        });
        if let Some(pods) = pods {
            named.resolve(pods);
        }
        named
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::*;
    use crate::event::RoleHint;
    use crate::route::Limits;

    /// A fake /proc: `(tgid, exe link target, ppid)`.
    fn fake_proc(procs: &[(u32, Option<&str>, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for &(tgid, exe, ppid) in procs {
            let p = dir.path().join(tgid.to_string());
            fs::create_dir(&p).unwrap();
            if let Some(exe) = exe {
                symlink(exe, p.join("exe")).unwrap();
            }
            let stat = format!("{tgid} (a) (b c) S {ppid} {tgid} {tgid} 0 -1 4194560 0\n");
            fs::write(p.join("stat"), stat).unwrap();
        }
        // Not processes: ignored by scans.
        fs::create_dir(dir.path().join("sys")).unwrap();
        symlink("100", dir.path().join("self")).unwrap();
        dir
    }

    fn open(tgid: u32, comm: &str) -> ConnOpen {
        ConnOpen {
            conn_id: 1,
            tgid,
            fd: 3,
            ts_ns: 0,
            role: RoleHint::Server,
            local: "127.0.0.1:80".parse().unwrap(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            comm: comm.to_owned(),
        }
    }

    fn tree() -> tempfile::TempDir {
        fake_proc(&[
            (1, Some("/sbin/init"), 0),
            (100, Some("/usr/local/bin/api-server"), 1),
            (101, Some("/usr/sbin/nginx (deleted)"), 1),
            (102, Some("/usr/sbin/nginx"), 101),
            (103, Some("/usr/bin/python3.12"), 102),
            (104, None, 2),
            (105, Some("/opt/bad\nname\u{e9}"), 1),
        ])
    }

    #[test]
    fn exe_names() {
        let dir = tree();
        let proc = ProcFs::new(dir.path());
        let cases = [
            (100, Some("api-server")),
            (101, Some("nginx")),
            (103, Some("python3.12")),
            (104, None),
            (105, Some("bad_name\u{e9}")),
            (999, None),
        ];
        for (tgid, want) in cases {
            assert_eq!(proc.exe_name(tgid).as_deref(), want, "tgid {tgid}");
        }
    }

    #[test]
    fn liveness_of_processes() {
        let dir = tree();
        std::fs::create_dir_all(dir.path().join("100")).unwrap();
        let proc = ProcFs::new(dir.path());
        assert!(proc.exists(100) && !proc.exists(999));
    }

    #[test]
    fn exe_filter() {
        let dir = tree();
        let proc = ProcFs::new(dir.path());
        let nginx = Regex::new("^nginx$").unwrap();
        assert_eq!(proc.matching(&nginx).unwrap(), vec![101, 102]);
        assert!(proc.matches(102, &nginx));
        assert!(!proc.matches(103, &nginx));
        assert!(!proc.matches(104, &nginx), "no exe link");
        let any = Regex::new("").unwrap();
        assert_eq!(
            proc.matching(&any).unwrap(),
            vec![1, 100, 101, 102, 103, 105]
        );
        let missing = ProcFs::new(dir.path().join("absent"));
        assert!(matches!(
            missing.matching(&any),
            Err(ProcError::List { .. })
        ));
    }

    #[test]
    fn pid_filter_takes_descendants() {
        let dir = tree();
        let proc = ProcFs::new(dir.path());
        assert_eq!(proc.with_descendants(&[101]).unwrap(), vec![101, 102, 103]);
        assert_eq!(
            proc.with_descendants(&[102, 100]).unwrap(),
            vec![100, 102, 103]
        );
        assert_eq!(
            proc.with_descendants(&[4242]).unwrap(),
            vec![4242],
            "roots kept as given"
        );
        assert_eq!(proc.with_descendants(&[]).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn names_fall_back_to_comm_then_unknown() {
        let dir = tree();
        let mut names = Names::new(ProcFs::new(dir.path()), Names::DEFAULT_CAPACITY);
        names.on_conn_open(&open(100, "api-worker"));
        names.on_conn_open(&open(104, "kworker"));
        names.on_conn_open(&open(106, ""));
        assert_eq!(names.service_name(100), "api-server");
        assert_eq!(names.service_name(104), "kworker");
        assert_eq!(names.service_name(106), UNKNOWN);
        assert_eq!(
            names.service_name(107),
            UNKNOWN,
            "never opened, not in /proc"
        );
        assert_eq!(
            names.service_name(103),
            "python3.12",
            "looked up without an open"
        );
    }

    #[test]
    fn names_are_cached_until_forgotten() {
        let dir = tree();
        let mut names = Names::new(ProcFs::new(dir.path()), Names::DEFAULT_CAPACITY);
        assert_eq!(names.service_name(100), "api-server");
        relink(dir.path(), 100, "/usr/bin/other");
        assert_eq!(names.service_name(100), "api-server", "cached");
        names.forget(100);
        assert_eq!(names.service_name(100), "other");
    }

    #[test]
    fn names_stay_within_capacity() {
        let dir = tree();
        let mut names = Names::new(ProcFs::new(dir.path()), 2);
        for tgid in [100, 101, 102, 103] {
            names.service_name(tgid);
            assert!(names.by_tgid.len() <= 2);
        }
        assert!(names.by_tgid.contains_key(&103), "newest kept");
    }

    #[test]
    fn service_ids_are_cached_and_forgotten_with_the_name() {
        let dir = tree();
        let mut names = Names::new(ProcFs::new(dir.path()), Names::DEFAULT_CAPACITY);
        let mut namer = Namer::new(Limits::default());
        let api = names.service_id(100, &mut namer);
        assert_eq!(namer.service_label(api), "api-server");
        relink(dir.path(), 100, "/usr/bin/other");
        assert_eq!(names.service_id(100, &mut namer), api, "cached");
        assert_eq!(names.service_name(100), "api-server");
        let nginx = names.service_id(101, &mut namer);
        assert_eq!(
            names.service_id(102, &mut namer),
            nginx,
            "same name, same id"
        );
        assert_ne!(nginx, api);
        names.forget(100);
        let other = names.service_id(100, &mut namer);
        assert_eq!(namer.service_label(other), "other");
        assert_ne!(other, api);
    }

    #[test]
    fn service_ids_leave_with_their_entry_when_full() {
        let dir = tree();
        let mut names = Names::new(ProcFs::new(dir.path()), 1);
        let mut namer = Namer::new(Limits::default());
        let api = names.service_id(100, &mut namer);
        relink(dir.path(), 100, "/usr/bin/other");
        names.service_id(101, &mut namer);
        assert_eq!(names.by_tgid.len(), 1);
        let again = names.service_id(100, &mut namer);
        assert_eq!(
            namer.service_label(again),
            "other",
            "evicted, looked up afresh"
        );
        assert_ne!(again, api);
    }

    #[test]
    fn service_ids_over_budget_stay_overflow() {
        let dir = tree();
        let mut names = Names::new(ProcFs::new(dir.path()), Names::DEFAULT_CAPACITY);
        let mut namer = Namer::new(Limits {
            services: 1,
            ..Limits::default()
        });
        assert!(!names.service_id(100, &mut namer).is_overflow());
        for _ in 0..2 {
            assert_eq!(names.service_id(103, &mut namer), ServiceId::OVERFLOW);
        }
        assert_eq!(names.service_name(103), "python3.12");
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let name = "\u{e9}".repeat(100); // 200 bytes
        let cut = label_value(&name).unwrap();
        assert_eq!(cut.len(), MAX_NAME_LEN);
        assert_eq!(label_value("\n"), Some("_".to_owned()));
        assert_eq!(label_value(""), None);
    }

    #[test]
    fn processes_in_pods_take_their_workload_name_once_known() {
        use crate::kubernetes::{cgroup::ContainerId, Pod, Workload};
        let dir = tree();
        let uid = "6b1f0e2a-4c3d-4e5f-9a8b-7c6d5e4f3a2b";
        let id = "ab".repeat(32);
        let cgroup = |tgid: u32, content: String| {
            fs::write(dir.path().join(tgid.to_string()).join("cgroup"), content).unwrap()
        };
        let slice = uid.replace('-', "_");
        cgroup(
            100,
            format!("0::/kubepods.slice/kubepods-pod{slice}.slice/cri-containerd-{id}.scope\n"),
        );
        cgroup(101, "0::/system.slice/nginx.service\n".into());
        let pods = Pods::default();
        let mut names =
            Names::new(ProcFs::new(dir.path()), Names::DEFAULT_CAPACITY).with_pods(pods.clone());
        let mut namer = Namer::new(Limits::default());
        let container = |names: &mut Names| names.pod(100).map(|p| p.values()[2].clone());

        // Not listed yet: named as a host process would be.
        assert_eq!(names.service_name(100), "api-server");
        let unknown = names.service_id(100, &mut namer);
        assert_eq!(container(&mut names), None);

        // Listed before its container's status names the container.
        let mut pod = Pod {
            uid: uid.into(),
            namespace: "shop".into(),
            name: "cart-5d9c7b-x2x".into(),
            workloads: vec![
                (Workload::ReplicaSet, "cart-5d9c7b".into()),
                (Workload::Deployment, "cart".into()),
            ],
            containers: Vec::new(),
        };
        pods.upsert(&pod);
        assert_eq!(names.service_name(100), "cart");
        assert_eq!(container(&mut names).as_deref(), Some(""));
        let pod_only = names.service_id(100, &mut namer);
        assert_ne!(pod_only, unknown);

        pod.containers = vec![(ContainerId::from_hex(id.as_bytes()).unwrap(), "app".into())];
        pods.upsert(&pod);
        assert_eq!(container(&mut names).as_deref(), Some("app"));
        let known = names.service_id(100, &mut namer);
        assert_ne!(known, pod_only);
        assert_eq!(namer.service_label(known), "cart");
        assert_eq!(
            namer.pod_labels(known).unwrap().values()[1],
            "cart-5d9c7b-x2x"
        );
        assert_eq!(names.exe_name(100), "api-server");

        // Found, it keeps its labels until it exits, whatever the index says.
        pods.remove(uid);
        assert_eq!(names.service_id(100, &mut namer), known);

        // Outside containers, or without pod metadata: as before.
        assert_eq!(names.service_name(101), "nginx");
        assert_eq!(names.pod(101), None);
        let mut without = Names::new(ProcFs::new(dir.path()), Names::DEFAULT_CAPACITY);
        assert_eq!(without.service_name(100), "api-server");
        assert_eq!(without.pod(100), None);
    }

    fn relink(root: &Path, tgid: u32, target: &str) {
        let link = root.join(tgid.to_string()).join("exe");
        fs::remove_file(&link).unwrap();
        symlink(target, link).unwrap();
    }
}
