//! The `CNI_*` environment a runtime passes, parsed and checked once: the
//! container, its netns, the interface and the pod (from `CNI_ARGS`).

use std::{collections::HashMap, fs::File, path::PathBuf};

use super::error::CniError;
use crate::topology::PodRef;

/// How a runtime calls us for one verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_CONTAINERID`: safe in a path and a store key.
    pub container_id: String,
    /// `CNI_NETNS`; empty on a DEL whose netns is already gone (containerd's second DEL).
    pub netns: String,
    /// `CNI_IFNAME`: a valid interface name.
    pub ifname: String,
    /// `CNI_ARGS`, passed on to delegates as they came.
    pub args: HashMap<String, String>,
    /// Where delegate plugins are looked up (`CNI_PATH`).
    pub path: Vec<PathBuf>,
    /// The pod kubelet names in `CNI_ARGS`, or why there is none.
    pod: Result<PodRef, String>,
}

/// The directories of `CNI_PATH`, the only variable STATUS and GC get.
pub fn cni_path(get: impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    get("CNI_PATH").unwrap_or_default().split(':').filter(|dir| !dir.is_empty()).map(PathBuf::from).collect()
}

impl CniEnv {
    /// Reads the variables ADD (and CHECK) need: all of them, netns included.
    pub fn for_add(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let env = Self::read(&get)?;
        if env.netns.is_empty() {
            return Err(CniError::Env { var: "CNI_NETNS", reason: "missing or empty".into() });
        }
        Ok(env)
    }

    /// Reads the variables DEL needs; the netns may be empty.
    pub fn for_del(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        Self::read(&get)
    }

    fn read(get: &impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let required = |var: &'static str| {
            get(var).filter(|v| !v.is_empty()).ok_or(CniError::Env { var, reason: "missing or empty".into() })
        };
        let container_id = required("CNI_CONTAINERID")?;
        if !is_valid_container_id(&container_id) {
            let shown: String = container_id.chars().take(64).collect();
            let reason = format!(
                "{shown:?} must start with a letter or digit, then only letters, digits, '_', '.' or '-', \
                 at most {MAX_CONTAINER_ID} bytes"
            );
            return Err(CniError::Env { var: "CNI_CONTAINERID", reason });
        }
        let ifname = required("CNI_IFNAME")?;
        if ifname.parse::<crate::topology::IfName>().is_err() {
            let reason = format!("{ifname:?} is not a valid interface name");
            return Err(CniError::Env { var: "CNI_IFNAME", reason });
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        let pod = pod_of(&args);
        Ok(Self { container_id, netns: get("CNI_NETNS").unwrap_or_default(), ifname, args, path: cni_path(get), pod })
    }

    /// The pod kubelet names in `CNI_ARGS`.
    pub fn pod(&self) -> Result<&PodRef, CniError> {
        self.pod.as_ref().map_err(|reason| CniError::Env { var: "CNI_ARGS", reason: reason.clone() })
    }

    /// The netns of `CNI_NETNS`, opened (and checked to be one).
    pub fn open_netns(&self) -> Result<File, CniError> {
        crate::netlink::open_netns(&self.netns).map_err(|e| CniError::Env { var: "CNI_NETNS", reason: e.to_string() })
    }
}

/// The pod in `K8S_POD_NAMESPACE` and `K8S_POD_NAME`.
fn pod_of(args: &HashMap<String, String>) -> Result<PodRef, String> {
    let arg = |key: &str| args.get(key).ok_or_else(|| format!("has no {key}"));
    PodRef::new(arg("K8S_POD_NAMESPACE")?, arg("K8S_POD_NAME")?).map_err(|e| e.to_string())
}

/// Far above any runtime's (containerd's are 64 hex digits), low enough to
/// keep store keys small.
const MAX_CONTAINER_ID: usize = 1024;

/// The spec's rule for container ids (they end up in store keys, so it
/// matters), and a length cap of ours.
fn is_valid_container_id(id: &str) -> bool {
    id.len() <= MAX_CONTAINER_ID
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Parses `K=V;K2=V2` (the `CNI_ARGS` format).
fn parse_args(raw: &str) -> Result<HashMap<String, String>, CniError> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::Env { var: "CNI_ARGS", reason: format!("{pair:?} is not KEY=VALUE") }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    const KUBELET: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=alpha;K8S_POD_INFRA_CONTAINER_ID=abc123"),
    ];

    #[test]
    fn reads_what_kubelet_passes() {
        let env = CniEnv::for_add(env(KUBELET)).unwrap();
        assert_eq!(env.pod().unwrap().to_string(), "default/alpha");
        assert_eq!(env.ifname, "eth0");
    }

    #[test]
    fn names_the_offending_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")], "CNI_CONTAINERID: missing"),
            (&[("CNI_CONTAINERID", "../etc"), ("CNI_IFNAME", "eth0")], "CNI_CONTAINERID: \"../etc\""),
            (&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0/x")], "CNI_IFNAME"),
            (&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "novalue")], "CNI_ARGS: \"novalue\""),
            (&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")], "CNI_NETNS: missing"),
        ];
        for (vars, expected) in cases {
            let err = CniEnv::for_add(env(vars)).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    proptest::proptest! {
        /// Whatever the runtime (or someone calling the binary) puts in the
        /// environment, what gets through is safe in a path, a store key and
        /// an interface name: no '/', no leading '.', at most 15 bytes for an
        /// ifname, DNS names for the pod.
        #[test]
        fn whatever_gets_through_is_safe_to_use(
            id in "\\PC{0,12}|[a-z0-9./_-]{0,12}",
            ifname in "\\PC{0,18}|[a-z0-9./_-]{0,18}",
            namespace in "\\PC{0,12}|[a-z0-9./-]{0,12}",
            name in "\\PC{0,12}|[a-z0-9./-]{0,12}",
            extra in "\\PC{0,20}",
        ) {
            let args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};{extra}");
            let vars = [("CNI_CONTAINERID", id.as_str()), ("CNI_IFNAME", ifname.as_str()), ("CNI_NETNS", "/x"), ("CNI_ARGS", &args)];
            let Ok(env) = CniEnv::for_add(env(&vars)) else { return Ok(()) };
            proptest::prop_assert!(!env.container_id.contains('/') && !env.container_id.starts_with('.'));
            proptest::prop_assert!(!env.ifname.contains('/') && env.ifname.len() <= 15 && env.ifname != "." && env.ifname != "..");
            if let Ok(pod) = env.pod() {
                for part in [&pod.namespace, &pod.name] {
                    proptest::prop_assert!(!part.contains('/') && !part.starts_with('.') && !part.is_empty(), "{pod}");
                }
            }
        }
    }

    #[test]
    fn del_accepts_an_empty_netns() {
        let env =
            CniEnv::for_del(env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")])).unwrap();
        assert!(env.netns.is_empty());
        assert!(matches!(env.pod(), Err(CniError::Env { var: "CNI_ARGS", .. })));
    }
}
