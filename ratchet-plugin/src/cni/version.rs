//! The spec versions ratchet speaks, and results in each one's layout.

use rscni_types::{
    legacy,
    types::{CNIResult, CNIResultWithVersion},
    version::SpecVersion,
};

/// Every version whose verbs and result shapes are implemented and tested.
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::new(0, 3, 0),
    SpecVersion::new(0, 3, 1),
    SpecVersion::new(0, 4, 0),
    SpecVersion::new(1, 0, 0),
    SpecVersion::new(1, 1, 0),
];

/// What errors are reported under when the config could not say.
pub const FALLBACK_VERSION: SpecVersion = SpecVersion::new(1, 0, 0);

/// A version string that is exactly `MAJOR.MINOR.PATCH` as the spec writes
/// it; the parser underneath also takes `1`, `1.0` and leading zeros.
pub fn canonical_version(text: &str) -> Option<SpecVersion> {
    text.parse::<SpecVersion>().ok().filter(|version| version.to_string() == text)
}

/// The `cniVersion` string as the input wrote it (empty when absent).
pub fn declared_text(text: &str) -> String {
    let declared = serde_json::from_str::<serde_json::Value>(text).ok();
    declared.and_then(|v| v["cniVersion"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// The ADD result in the layout of the config's version: 0.3.x and 0.4.0
/// carry `ips[].version`; 1.1.0 adds per-interface MTUs, which older
/// versions must not see.
pub fn encode_result(version: SpecVersion, mut result: CNIResult) -> serde_json::Value {
    if version < SpecVersion::new(1, 1, 0) {
        for interface in &mut result.interfaces {
            interface.mtu = None;
        }
    }
    if version.is_legacy() {
        to_json(&legacy::CNIResult::new(version, result))
    } else {
        to_json(&CNIResultWithVersion::new(version, result))
    }
}

/// Any serializable CNI type as JSON.
pub fn to_json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("CNI types always serialize")
}
