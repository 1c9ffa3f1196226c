//! Link impairments: loss, rate, delay and jitter on the frames one end of
//! a link sends, as the topology's keys and `ratchet link set` give them.
//!
//! Each value reads and prints as `tc` writes it (`5%`, `100mbit`, `10ms`),
//! in topology files, on the command line, in the store and in views.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What the frames one end sends go through. Every key is optional; none
/// set is an unimpaired direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impairment {
    /// The share of frames dropped, by the datapath program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    /// The most the end sends, shaped by a qdisc on the pod's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Added latency (netem, where the kernel has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Random variation of the delay (netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Delay>,
}

impl Impairment {
    /// No key set.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// Each key of `self`, else `fallback`'s.
    pub fn or(self, fallback: Self) -> Self {
        Self {
            loss: self.loss.or(fallback.loss),
            rate: self.rate.or(fallback.rate),
            delay: self.delay.or(fallback.delay),
            jitter: self.jitter.or(fallback.jitter),
        }
    }

    /// What a qdisc does of it: everything but the loss.
    pub fn shaping(&self) -> Self {
        Self { loss: None, ..*self }
    }

    /// Jitter varies a delay, so it needs one.
    pub fn validate(&self) -> Result<(), String> {
        match (self.jitter, self.delay) {
            (Some(jitter), None) => Err(format!("jitter {jitter} needs a delay to vary")),
            _ => Ok(()),
        }
    }

    /// The datapath's loss value: the share out of [`ratchet_common::LOSS_SCALE`].
    pub fn loss_scaled(&self) -> u16 {
        self.loss.map_or(0, Loss::scaled)
    }
}

/// `loss 5% rate 100mbit delay 10ms jitter 1ms`, the keys set; `-` for none.
impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = [
            self.loss.map(|v| format!("loss {v}")),
            self.rate.map(|v| format!("rate {v}")),
            self.delay.map(|v| format!("delay {v}")),
            self.jitter.map(|v| format!("jitter {v}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        match keys.is_empty() {
            true => f.write_str("-"),
            false => f.write_str(&keys.join(" ")),
        }
    }
}

/// A share of frames, in millionths (`0.5%` is 5000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loss(u32);

impl Loss {
    const WHOLE: u32 = 1_000_000;

    /// Out of [`ratchet_common::LOSS_SCALE`], rounded, but never to 0 for a loss above 0.
    pub fn scaled(self) -> u16 {
        let scale = u64::from(ratchet_common::LOSS_SCALE);
        let scaled = (u64::from(self.0) * scale + u64::from(Self::WHOLE / 2)) / u64::from(Self::WHOLE);
        u16::try_from(scaled.max(u64::from(self.0 > 0))).unwrap_or(ratchet_common::LOSS_SCALE)
    }
}

impl FromStr for Loss {
    type Err = String;

    /// `5%`, `0.25%` (at most four decimals), or the same without `%`.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
        let millionths = decimal(number, 4).filter(|m| *m <= 100 * 10_000);
        match millionths {
            Some(millionths) => Ok(Self(u32::try_from(millionths).expect("at most 1000000"))),
            None => Err(format!("loss {text:?} is not a percentage from 0% to 100% (at most four decimals)")),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", trimmed(u64::from(self.0), 10_000))
    }
}

/// A rate in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(u64);

impl Rate {
    /// `tc`'s units: bits, and bytes (`bps`), with decimal prefixes.
    const UNITS: [(&'static str, u64); 10] = [
        ("tbit", 1_000_000_000_000),
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
        ("bit", 1),
        ("tbps", 8_000_000_000_000),
        ("gbps", 8_000_000_000),
        ("mbps", 8_000_000),
        ("kbps", 8_000),
        ("bps", 8),
    ];

    /// Bytes per second, as qdiscs take it.
    pub fn bytes_per_second(self) -> u64 {
        self.0 / 8
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `100mbit`, `1.5gbit`, `800kbps` (`tc`'s units; `bps` is bytes).
    fn from_str(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let parsed = Self::UNITS.iter().find_map(|(unit, scale)| {
            let number = lower.strip_suffix(unit)?;
            let thousandths = decimal(number, 3)?;
            thousandths.checked_mul(*scale).map(|bits| bits / 1000)
        });
        match parsed {
            Some(bits) if bits >= 8 => Ok(Self(bits)),
            _ => Err(format!(
                "rate {text:?} is not a rate of at least 8bit, in tc's units (bit, kbit, mbit, gbit, tbit; bps, \
                 kbps, mbps, gbps, tbps for bytes)"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = Self::UNITS[..5].iter().find(|(_, scale)| self.0 >= *scale).unwrap_or(&Self::UNITS[4]);
        write!(f, "{}{unit}", trimmed(self.0, *scale))
    }
}

/// A duration in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delay(u64);

impl Delay {
    const UNITS: [(&'static str, u64); 3] = [("us", 1), ("ms", 1_000), ("s", 1_000_000)];

    /// In nanoseconds, as netem takes it.
    pub fn nanos(self) -> u64 {
        self.0 * 1000
    }
}

impl FromStr for Delay {
    type Err = String;

    /// `10ms`, `1.5ms`, `250us`, `1s`.
    fn from_str(text: &str) -> Result<Self, String> {
        // `us` and `ms` are tried before `s`, which ends them too.
        let micros = Self::UNITS.iter().find_map(|(unit, scale)| {
            let number = text.trim().strip_suffix(unit)?;
            Some(decimal(number, 3)?.checked_mul(*scale)? / 1000)
        });
        match micros {
            Some(micros) if micros <= 60_000_000 => Ok(Self(micros)),
            _ => Err(format!("{text:?} is not a duration from 0 to 60s in us, ms or s (as 10ms)")),
        }
    }
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = Self::UNITS.iter().rev().find(|(_, scale)| self.0 >= *scale).unwrap_or(&Self::UNITS[0]);
        write!(f, "{}{unit}", trimmed(self.0, *scale))
    }
}

/// Each value type reads from and writes to the store and topology files
/// as its text.
macro_rules! serde_as_text {
    ($($type:ty),*) => {$(
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                /// A YAML or JSON number is taken as the text it spells.
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Text {
                    Text(String),
                    Number(serde_json::Number),
                }
                let text = match Text::deserialize(deserializer)? {
                    Text::Text(text) => text,
                    Text::Number(number) => number.to_string(),
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(Loss, Rate, Delay);

/// A non-negative decimal with at most `places` decimals, in units of
/// 10^-places (`decimal("1.5", 3)` is 1500).
fn decimal(text: &str, places: u32) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > places as usize {
        return None;
    }
    let scale = 10u64.pow(places);
    let padded = format!("{fraction:0<width$}", width = places as usize);
    let fraction: u64 = if places == 0 { 0 } else { padded.parse().ok()? };
    whole.parse::<u64>().ok()?.checked_mul(scale)?.checked_add(fraction)
}

/// `value / scale` with the decimals it needs and no trailing zeros.
fn trimmed(value: u64, scale: u64) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    format!("{whole}.{rest:0width$}").trim_end_matches('0').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_tc_writes_them_and_print_back_the_same() {
        for text in ["5%", "0.25%", "100%", "0%"] {
            assert_eq!(text.parse::<Loss>().unwrap().to_string(), text);
        }
        for text in ["100mbit", "1.5gbit", "64kbit", "8bit"] {
            assert_eq!(text.parse::<Rate>().unwrap().to_string(), text);
        }
        assert_eq!("1mbps".parse::<Rate>().unwrap().to_string(), "8mbit", "bps is bytes, as in tc");
        for text in ["10ms", "1.5ms", "250us", "1s"] {
            assert_eq!(text.parse::<Delay>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn nonsense_is_refused_with_what_was_given() {
        for bad in ["101%", "-1%", "5.12345%", "x%", ""] {
            let error = bad.parse::<Loss>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
        for bad in ["100", "100mbits", "0mbit", "fast", "1.0005kbit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        for bad in ["10", "10m", "61s", "-1ms", "ms"] {
            assert!(bad.parse::<Delay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loss_scales_to_the_datapath_without_vanishing() {
        assert_eq!("100%".parse::<Loss>().unwrap().scaled(), ratchet_common::LOSS_SCALE);
        assert_eq!("0%".parse::<Loss>().unwrap().scaled(), 0);
        assert_eq!("0.0001%".parse::<Loss>().unwrap().scaled(), 1, "a loss asked for is never none");
        assert_eq!("10%".parse::<Loss>().unwrap().scaled(), 6554);
    }

    #[test]
    fn topology_keys_take_text_or_numbers_and_jitter_needs_a_delay() {
        let impairment: Impairment = serde_json::from_str(r#"{"loss": 5, "rate": "10mbit", "delay": "5ms"}"#).unwrap();
        assert_eq!(impairment.to_string(), "loss 5% rate 10mbit delay 5ms");
        assert!(serde_json::from_str::<Impairment>(r#"{"los": "5%"}"#).is_err());
        let jitter_alone: Impairment = serde_json::from_str(r#"{"jitter": "1ms"}"#).unwrap();
        assert!(jitter_alone.validate().unwrap_err().contains("needs a delay"));
    }
}
