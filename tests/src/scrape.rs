//! The agent's HTTP endpoint as Prometheus and kubelet see it: a plain
//! HTTP/1.1 GET over a socket of the test's own, and a strict parser of the
//! Prometheus text format (0.0.4) that refuses any line a Prometheus server
//! would refuse, so "it parses" means a real scrape would not fail.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The header lines, as sent.
    pub headers: String,
    pub body: String,
}

impl Answer {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

/// `METHOD path` on `address`, the connection closed after the answer; each
/// step may take at most five seconds.
pub fn request(address: SocketAddr, method: &str, path: &str) -> Answer {
    try_request(address, method, path).unwrap_or_else(|e| panic!("{method} {path} at the agent at {address}: {e}"))
}

/// The same, with an error where the agent cannot be reached or its answer
/// read (e.g. while it starts, or after it stopped); panics on an answer
/// that is not HTTP.
pub fn try_request(address: SocketAddr, method: &str, path: &str) -> std::io::Result<Answer> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of headers in {raw}"));
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok());
    Ok(Answer {
        status: status.unwrap_or_else(|| panic!("not an HTTP status line: {status_line}")),
        headers: headers.to_owned(),
        body: body.to_owned(),
    })
}

/// `GET path` on `address`.
pub fn get(address: SocketAddr, path: &str) -> Answer {
    request(address, "GET", path)
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Label values unescaped.
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of a scrape.
#[derive(Debug)]
pub struct Scrape(pub Vec<Sample>);

impl Scrape {
    /// Parses a whole scrape; panics naming the first line that does not parse.
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for (number, line) in text.lines().enumerate() {
            match parse_line(line) {
                Ok(Some(sample)) => samples.push(sample),
                Ok(None) => {}
                Err(why) => panic!("line {} does not parse ({why}): {line:?}\nin:\n{text}", number + 1),
            }
        }
        Self(samples)
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        let matches = |sample: &&Sample| {
            sample.name == name && labels.iter().all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
        };
        self.0.iter().filter(matches).collect()
    }

    /// The one sample so named and labelled.
    pub fn one(&self, name: &str, labels: &[(&str, &str)]) -> &Sample {
        let found = self.find(name, labels);
        assert_eq!(found.len(), 1, "one {name} {labels:?} in {:#?}", self.0);
        found[0]
    }

    /// Its value.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.one(name, labels).value
    }
}

/// A sample, `None` for a comment or blank line, or why the line is wrong.
fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    if line.is_empty() {
        return Ok(None);
    }
    if let Some(comment) = line.strip_prefix('#') {
        return check_comment(comment).map(|()| None);
    }
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Some(Sample { name: name.to_owned(), labels, value }))
}

/// `# HELP name text`, `# TYPE name kind`, or any other comment.
fn check_comment(comment: &str) -> Result<(), String> {
    let mut words = comment.trim_start().splitn(3, ' ');
    match words.next() {
        Some("HELP") | Some("TYPE") => {}
        _ => return Ok(()),
    }
    let name = words.next().unwrap_or("");
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?} in a comment"));
    }
    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
    if comment.trim_start().starts_with("TYPE") && !kinds.contains(&words.next().unwrap_or("")) {
        return Err("unknown TYPE".into());
    }
    Ok(())
}

/// Parses `name="value",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut text: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let (name, rest) = text.split_once("=\"").ok_or("a label without =\"")?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let (value, rest) = unescape(rest)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        if !rest.starts_with([',', '}']) {
            return Err("a label value not followed by , or }".into());
        }
        text = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A label value up to its closing quote, unescaped (`\\`, `\"`, `\n` are
/// the only escapes; a bare `"` ends it); returns what follows the quote.
fn unescape(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("bad escape {other:?}")),
            },
            '\n' => return Err("a raw newline in a label value".into()),
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_label_values_and_refuses_broken_lines() {
        let text = "# HELP m A metric.\n# TYPE m counter\nm_total{a=\"x\\\"y\\\\z\",b=\"\"} 3\nm_total 4 1700000000\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.value("m_total", &[("a", "x\"y\\z")]), 3.0);
        assert_eq!(scrape.0[1].value, 4.0);
        for broken in ["m{a=\"x\"y\"} 1", "m{a=\"x\\q\"} 1", "m{a=\"x} 1", "m{a=\"x\"}", "1m 2", "m{a=\"1\",a=\"2\"} 3"]
        {
            assert!(parse_line(broken).is_err(), "{broken}");
        }
    }
}
