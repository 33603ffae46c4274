//! Pod metadata for the processes sonde sees: which pod, container and
//! workload a process runs in, so its series and spans carry `k8s_*` labels
//! and its `service_name` defaults to its workload's name.
//!
//! A process's container id comes from its cgroup (`cgroup`); the pods of
//! this node come from the API server, listed then watched (`api`) into a
//! [`Pods`] index shared with the pipeline. The pipeline asks it once per
//! process (`process::Names`), never per request.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use foldhash::HashMap;

pub mod api;
pub mod cgroup;
#[cfg(test)]
pub(crate) mod fake_api;

use cgroup::{Container, ContainerId};

/// Prometheus label names, in the order of [`PodLabels::values`].
pub const LABELS: [&str; 9] = [
    "k8s_namespace_name",
    "k8s_pod_name",
    "k8s_container_name",
    "k8s_deployment_name",
    "k8s_replicaset_name",
    "k8s_statefulset_name",
    "k8s_daemonset_name",
    "k8s_cronjob_name",
    "k8s_job_name",
];

/// OpenTelemetry resource attributes, in the same order.
pub const ATTRIBUTES: [&str; 9] = [
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "k8s.deployment.name",
    "k8s.replicaset.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
];

const POD: usize = 1;
/// Index in [`LABELS`] of the first workload label; the service is named
/// after the first workload present from there (OpenTelemetry's order for
/// `service.name` on Kubernetes), else after the pod.
const WORKLOADS: usize = 3;

/// The workloads a pod may belong to, each a label of [`LABELS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    Deployment = 3,
    ReplicaSet = 4,
    StatefulSet = 5,
    DaemonSet = 6,
    CronJob = 7,
    Job = 8,
}

impl Workload {
    /// The workload of an owner reference's `kind`.
    pub fn of_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Deployment" => Workload::Deployment,
            "ReplicaSet" => Workload::ReplicaSet,
            "StatefulSet" => Workload::StatefulSet,
            "DaemonSet" => Workload::DaemonSet,
            "CronJob" => Workload::CronJob,
            "Job" => Workload::Job,
            _ => return None,
        })
    }
}

/// A pod of this node, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The workloads it belongs to, nearest first (a ReplicaSet, then its
    /// Deployment).
    pub workloads: Vec<(Workload, String)>,
    /// Its containers that have started, by id, with their names.
    pub containers: Vec<(ContainerId, String)>,
}

/// The `k8s_*` label values of one container of a pod (or of a pod, with
/// no container name, while its container is not known yet).
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodLabels {
    values: [String; LABELS.len()],
}

impl PodLabels {
    /// The labels of `container` of `pod` (empty: the pod's own).
    pub fn new(pod: &Pod, container: &str) -> Self {
        let mut values: [String; LABELS.len()] = Default::default();
        values[0] = pod.namespace.clone();
        values[POD] = pod.name.clone();
        values[2] = container.to_owned();
        for (workload, name) in &pod.workloads {
            values[*workload as usize] = name.clone();
        }
        PodLabels { values }
    }

    /// Values in the order of [`LABELS`] and [`ATTRIBUTES`]; empty when
    /// the pod has no such workload.
    pub fn values(&self) -> &[String; LABELS.len()] {
        &self.values
    }

    /// The default `service_name` of the processes of this pod: its
    /// workload's name, else the pod's.
    pub fn service_name(&self) -> &str {
        self.values[WORKLOADS..]
            .iter()
            .find(|v| !v.is_empty())
            .unwrap_or(&self.values[POD])
    }
}

/// What the index knows of a container.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its pod and its name.
    Container(Arc<PodLabels>),
    /// Its pod only: the pod's status does not list the container yet (it
    /// just started). Worth asking again when the index changes.
    Pod(Arc<PodLabels>),
    /// Nothing (yet): the pod is not listed yet, or the container is not a
    /// pod's (plain Docker).
    Unknown,
}

impl Lookup {
    pub fn labels(&self) -> Option<&Arc<PodLabels>> {
        match self {
            Lookup::Container(l) | Lookup::Pod(l) => Some(l),
            Lookup::Unknown => None,
        }
    }
}

/// The pods of this node by container id and by UID. Cheap to clone; the
/// watch writes, the pipeline reads.
#[derive(Clone, Default)]
pub struct Pods {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Bumped at every change, so a process whose pod was not known can be
    /// looked up again only when something changed.
    generation: AtomicU64,
    index: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    by_container: HashMap<ContainerId, Arc<PodLabels>>,
    by_uid: HashMap<String, Indexed>,
}

struct Indexed {
    /// Labels without a container name.
    labels: Arc<PodLabels>,
    containers: Vec<ContainerId>,
}

impl Index {
    fn insert(&mut self, pod: &Pod) {
        self.remove(&pod.uid);
        for (id, name) in &pod.containers {
            self.by_container
                .insert(*id, Arc::new(PodLabels::new(pod, name)));
        }
        self.by_uid.insert(
            pod.uid.clone(),
            Indexed {
                labels: Arc::new(PodLabels::new(pod, "")),
                containers: pod.containers.iter().map(|(id, _)| *id).collect(),
            },
        );
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for id in old.containers {
                self.by_container.remove(&id);
            }
        }
    }
}

impl Pods {
    /// Changes so far; see [`Lookup::Pod`].
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    pub fn lookup(&self, container: &Container) -> Lookup {
        let index = self.read();
        if let Some(labels) = index.by_container.get(&container.id) {
            return Lookup::Container(labels.clone());
        }
        match container
            .pod_uid
            .as_ref()
            .and_then(|uid| index.by_uid.get(uid))
        {
            Some(pod) => Lookup::Pod(pod.labels.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Waits until the index has been filled once, at most `timeout`;
    /// whether it was.
    pub async fn first_list(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.generation() == 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Number of pods known.
    pub(crate) fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    /// Makes `pods` the whole index (after a list).
    pub fn replace(&self, pods: &[Pod]) {
        self.change(|index| {
            *index = Index::default();
            pods.iter().for_each(|pod| index.insert(pod));
        });
    }

    /// Adds or updates one pod.
    pub fn upsert(&self, pod: &Pod) {
        self.change(|index| index.insert(pod));
    }

    pub fn remove(&self, uid: &str) {
        self.change(|index| index.remove(uid));
    }

    fn change(&self, f: impl FnOnce(&mut Index)) {
        let mut index = self
            .shared
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut index);
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContainerId {
        ContainerId::from_hex(format!("{n:02x}").repeat(32).as_bytes()).unwrap()
    }

    fn pod(
        uid: &str,
        name: &str,
        workloads: &[(Workload, &str)],
        containers: &[(u8, &str)],
    ) -> Pod {
        Pod {
            uid: uid.into(),
            namespace: "shop".into(),
            name: name.into(),
            workloads: workloads.iter().map(|&(w, n)| (w, n.into())).collect(),
            containers: containers.iter().map(|&(i, n)| (id(i), n.into())).collect(),
        }
    }

    fn container(n: u8, uid: Option<&str>) -> Container {
        Container {
            id: id(n),
            pod_uid: uid.map(str::to_owned),
        }
    }

    #[test]
    fn service_names_follow_the_workload() {
        use Workload::*;
        let cases = [
            (
                vec![(ReplicaSet, "cart-5d9c7b"), (Deployment, "cart")],
                "cart",
            ),
            (vec![(ReplicaSet, "cart-5d9c7b")], "cart-5d9c7b"),
            (vec![(StatefulSet, "db")], "db"),
            (vec![(DaemonSet, "agent")], "agent"),
            (vec![(Job, "report-2900"), (CronJob, "report")], "report"),
            (vec![(Job, "migrate")], "migrate"),
            (vec![], "debug-pod"),
        ];
        for (workloads, want) in cases {
            let p = pod("u", "debug-pod", &workloads, &[]);
            assert_eq!(
                PodLabels::new(&p, "c").service_name(),
                want,
                "{workloads:?}"
            );
        }
    }

    #[test]
    fn labels_in_order() {
        let p = pod(
            "u",
            "cart-5d9c7b-x2x",
            &[
                (Workload::ReplicaSet, "cart-5d9c7b"),
                (Workload::Deployment, "cart"),
            ],
            &[],
        );
        assert_eq!(
            PodLabels::new(&p, "app").values(),
            &[
                "shop",
                "cart-5d9c7b-x2x",
                "app",
                "cart",
                "cart-5d9c7b",
                "",
                "",
                "",
                ""
            ]
        );
    }

    #[test]
    fn index_by_container_then_pod() {
        let pods = Pods::default();
        assert_eq!(pods.lookup(&container(1, Some("u1"))), Lookup::Unknown);
        let g0 = pods.generation();
        let not_yet = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(pods.first_list(std::time::Duration::from_millis(30)));
        assert!(!not_yet);
        pods.replace(&[pod("u1", "web-0", &[], &[(1, "app"), (2, "sidecar")])]);
        assert!(pods.generation() > g0);
        let found = |n, uid| {
            pods.lookup(&container(n, uid))
                .labels()
                .map(|l| l.values()[2].clone())
        };
        assert_eq!(found(1, None).as_deref(), Some("app"));
        assert_eq!(found(2, Some("u1")).as_deref(), Some("sidecar"));
        assert!(matches!(
            pods.lookup(&container(3, Some("u1"))),
            Lookup::Pod(_)
        ));
        assert_eq!(found(3, Some("u1")).as_deref(), Some(""));
        assert_eq!(pods.lookup(&container(3, Some("u9"))), Lookup::Unknown);

        // An update replaces the pod's containers; a removal forgets them.
        pods.upsert(&pod("u1", "web-0", &[], &[(3, "app")]));
        assert_eq!(found(3, None).as_deref(), Some("app"));
        assert_eq!(found(1, None), None);
        pods.remove("u1");
        assert_eq!(pods.lookup(&container(3, Some("u1"))), Lookup::Unknown);
        assert_eq!(pods.len(), 0);
    }
}
