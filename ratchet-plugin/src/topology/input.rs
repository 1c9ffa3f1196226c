//! Topology files as users already have them, told apart by their content:
//! ratchet's own (`{links: [...]}`, JSON or YAML), meshnet-cni's Topology
//! objects (a `kind: List` or several YAML documents, other kinds skipped)
//! and containerlab's topology file (`topology.links[].endpoints`).
//! `ratchet topology apply` and `convert` and `ratchet install --topology`
//! read files through [`parse`].

use serde_json::{Value, json};

use super::{MapOnly, Topology, TopologyError, meshnet};

/// The formats [`parse`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ratchet's own: `{links: [{a, b, name?, mtu?}]}`.
    Ratchet,
    /// meshnet-cni's `networkop.co.uk/v1beta1` Topology objects.
    Meshnet,
    /// containerlab's `topology.links[].endpoints`.
    Containerlab,
}

/// Reads `text` in whichever format it is, `namespace` for the pods of a
/// format that names none (containerlab, meshnet objects without one).
pub fn parse(text: &str, namespace: &str) -> Result<(Format, Topology), TopologyError> {
    let documents = documents(text)?;
    let topology_objects: Vec<&Value> = documents.iter().flat_map(meshnet_objects).collect();
    let (format, topology) = if !topology_objects.is_empty() {
        let objects = topology_objects
            .into_iter()
            .map(|object| serde_json::from_value(object.clone()))
            .collect::<Result<Vec<meshnet::MeshnetTopology>, _>>()
            .map_err(|e| TopologyError::Parse(format!("a meshnet Topology object: {e}")))?;
        (Format::Meshnet, meshnet::to_topology(&objects, namespace)?)
    } else {
        match documents.as_slice() {
            [one] if one.get("topology").is_some() => (Format::Containerlab, containerlab(one, namespace)?),
            [one] if one.get("links").is_some() => (Format::Ratchet, ratchet(one)?),
            [one] if !one.is_object() => {
                return Err(TopologyError::Parse(format!("expected an object, not {}; {FORMATS}", kind_of(one))));
            }
            _ => return Err(TopologyError::Parse(format!("no format it knows; {FORMATS}"))),
        }
    };
    topology.validate()?;
    Ok((format, topology))
}

/// What a file that is none of the formats is told.
const FORMATS: &str = "a topology is ratchet's {\"links\": [...]} (JSON or YAML), meshnet Topology objects \
     (networkop.co.uk/v1beta1) or a containerlab topology (topology.links)";

/// What a JSON value is, for a message.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "a list",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "nothing",
        Value::Object(_) => "an object",
    }
}

/// The file's documents: one JSON value (serde_json's messages are the
/// clearer for JSON), or each YAML document.
fn documents(text: &str) -> Result<Vec<Value>, TopologyError> {
    if text.trim_start().starts_with(['{', '[']) {
        return serde_json::from_str(text)
            .map(|value| vec![value])
            .map_err(|e| TopologyError::Parse(format!("not valid JSON: {e}")));
    }
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| TopologyError::Parse(format!("not valid YAML: {e}")))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// The meshnet Topology objects in a document: itself, or a List's items.
fn meshnet_objects(document: &Value) -> Vec<&Value> {
    let is_topology = |object: &Value| {
        object["kind"] == meshnet::KIND
            && object["apiVersion"].as_str().is_some_and(|api| api.starts_with(&format!("{}/", meshnet::GROUP)))
    };
    match document["kind"].as_str() {
        Some("List") => document["items"].as_array().into_iter().flatten().filter(|item| is_topology(item)).collect(),
        _ => [document].into_iter().filter(|object| is_topology(object)).collect(),
    }
}

/// ratchet's own format from a parsed document.
fn ratchet(document: &Value) -> Result<Topology, TopologyError> {
    let MapOnly::<Topology>(topology) =
        serde_json::from_value(document.clone()).map_err(|e| TopologyError::Parse(e.to_string()))?;
    Ok(topology)
}

/// containerlab's links: each `endpoints` pair, brief (`"node:interface"`)
/// or extended (`{node, interface, mac}`), with the link's `mtu`; the node is
/// the pod, in `namespace`.
fn containerlab(document: &Value, namespace: &str) -> Result<Topology, TopologyError> {
    let links = document["topology"]["links"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut converted = Vec::with_capacity(links.len());
    for (index, link) in links.iter().enumerate() {
        let invalid = |reason: String| TopologyError::Parse(format!("containerlab link {index}: {reason}"));
        let endpoints = link["endpoints"].as_array().map(Vec::as_slice).unwrap_or_default();
        let [a, b] = endpoints else {
            return Err(invalid(format!("endpoints must be two, not {}", endpoints.len())));
        };
        let mut ratchet = json!({"a": endpoint(a).map_err(invalid)?, "b": endpoint(b).map_err(invalid)?});
        for end in ["a", "b"] {
            ratchet[end]["pod"] = json!(format!("{namespace}/{}", ratchet[end]["pod"].as_str().unwrap_or_default()));
        }
        if let Some(mtu) = link.get("mtu") {
            ratchet["mtu"] = mtu.clone();
        }
        let MapOnly(link) = serde_json::from_value(ratchet).map_err(|e| invalid(e.to_string()))?;
        converted.push(link);
    }
    Ok(Topology { links: converted })
}

/// Nodes of containerlab's that are not containers: no pod has their end.
const NOT_PODS: [&str; 4] = ["host", "mgmt-net", "macvlan", "bridge"];

/// One containerlab endpoint as a ratchet end (its pod not namespaced yet).
fn endpoint(endpoint: &Value) -> Result<Value, String> {
    let (node, interface, mac) = match endpoint {
        Value::String(brief) => {
            let (node, interface) = brief.split_once(':').ok_or(format!("endpoint {brief:?} is not node:interface"))?;
            (node.to_owned(), interface.to_owned(), None)
        }
        Value::Object(extended) => {
            let field = |name: &str| extended.get(name).and_then(Value::as_str).map(str::to_owned);
            let node = field("node").ok_or(format!("endpoint {endpoint} has no node"))?;
            let interface = field("interface").ok_or(format!("endpoint {endpoint} has no interface"))?;
            (node, interface, field("mac"))
        }
        other => return Err(format!("endpoint {other} is neither node:interface nor {{node, interface}}")),
    };
    if NOT_PODS.contains(&node.as_str()) || NOT_PODS.iter().any(|kind| node.starts_with(&format!("{kind}:"))) {
        return Err(format!("endpoint {node}:{interface} is containerlab's {node}, which no pod is"));
    }
    let mut end = json!({"pod": node, "ifname": interface});
    if let Some(mac) = mac {
        end["mac"] = json!(mac);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratchet_json_and_yaml_read_the_same() {
        let json = r#"{"links": [{"a": {"pod": "lab/r1", "ifname": "in1", "ips": ["10.0.0.1/30"]},
            "b": {"pod": "lab/r2", "ifname": "in1", "ips": ["10.0.0.2/30"]}}]}"#;
        let yaml = "links:\n  - a: {pod: lab/r1, ifname: in1, ips: [10.0.0.1/30]}\n    \
                    b: {pod: lab/r2, ifname: in1, ips: [10.0.0.2/30]}\n";
        let (format, from_json) = parse(json, "default").unwrap();
        assert_eq!(format, Format::Ratchet);
        assert_eq!(parse(yaml, "default").unwrap(), (Format::Ratchet, from_json));
    }

    #[test]
    fn meshnet_objects_in_a_stream_skip_other_kinds() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: r1}\n---\n\
            apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {name: r1}\n\
            spec: {links: [{uid: 7, peer_pod: r2, local_intf: e1, peer_intf: e2, local_ip: 10.0.0.1/31, peer_ip: 10.0.0.0/31}]}\n";
        let (format, topology) = parse(yaml, "lab").unwrap();
        assert_eq!(format, Format::Meshnet);
        assert_eq!(topology.links[0].b.pod.to_string(), "lab/r2");
    }

    #[test]
    fn containerlab_brief_and_extended_endpoints() {
        let yaml = "name: lab\ntopology:\n  nodes: {r1: {kind: linux}, r2: {kind: linux}}\n  links:\n    \
            - endpoints: [\"r1:eth1\", \"r2:eth1\"]\n    \
            - endpoints: [{node: r1, interface: eth2, mac: \"02:00:00:00:00:01\"}, {node: r2, interface: eth2}]\n      mtu: 9000\n";
        let (format, topology) = parse(yaml, "lab").unwrap();
        assert_eq!(format, Format::Containerlab);
        assert_eq!(topology.links.len(), 2);
        assert_eq!(topology.links[1].mtu, Some(9000));
        assert!(topology.links[1].a.mac.is_some());
        let host = "topology:\n  links:\n    - endpoints: [\"r1:eth1\", \"host:veth1\"]\n";
        assert!(parse(host, "lab").unwrap_err().to_string().contains("host"));
    }

    #[test]
    fn anything_else_says_which_formats_are_read() {
        for text in ["nodes: []", "[1, 2]", "42", "", "{\"links\": 5"] {
            let error = parse(text, "default").unwrap_err().to_string();
            assert!(error.contains("links") || error.contains("JSON"), "{text}: {error}");
        }
    }
}
