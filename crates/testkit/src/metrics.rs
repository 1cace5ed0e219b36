//! Checks a `/metrics` answer against the Prometheus text exposition format
//! (version 0.0.4) as a scraper reads it, and reads samples out of it.

use std::collections::{BTreeMap, HashMap};

/// One sample: its name, its labels in order, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return Err(format!("no value: {line}")),
    };
    if !valid_name(name) {
        return Err(format!("`{name}` is not a metric name: {line}"));
    }
    let mut labels = Vec::new();
    let rest = if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // label name
            let start = match chars.peek() {
                Some((i, '}')) => break *i,
                Some((i, _)) => *i,
                None => return Err(format!("unterminated labels: {line}")),
            };
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or_else(|| format!("a label without `=`: {line}"))?;
            let key = &inner[start..eq];
            if !valid_name(key) || key.starts_with("__") {
                return Err(format!("`{key}` is not a label name: {line}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label `{key}` is not quoted: {line}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in label `{key}`: {line}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value of label `{key}`: {line}")),
                }
            }
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label `{key}` twice: {line}"));
            }
            labels.push((key.to_owned(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => break i,
                other => return Err(format!("expected `,` or `}}` after label `{key}`, got {other:?}: {line}")),
            }
        };
        &inner[end + 1..]
    } else {
        rest
    };
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("no value: {line}"))?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("`{v}` is not a number: {line}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("`{timestamp}` is not a timestamp: {line}"))?;
    }
    if fields.next().is_some() {
        return Err(format!("trailing text: {line}"));
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Parses and checks a whole exposition: every sample belongs to a family declared by one `# TYPE` line before it
/// (with `# HELP`), a family's samples are together, no series repeats, counters are not negative, and every
/// histogram series has increasing `le` buckets ending in `+Inf`, cumulative counts, and `+Inf` equal to `_count`.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: HashMap<String, bool> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) => {
                    helped.insert(name.to_owned(), true);
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                        return Err(format!("unknown type `{kind}`: {line}"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(format!("`{name}` is declared twice"));
                    }
                    if let Some(previous) = current.replace(name.to_owned()) {
                        finished.push(previous);
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line)?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample.name.strip_suffix(suffix).filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&sample.name)
            .to_owned();
        let Some(kind) = types.get(&family) else {
            return Err(format!("`{}` has no # TYPE line before it", sample.name));
        };
        if current.as_deref() != Some(family.as_str()) || finished.contains(&family) {
            return Err(format!("`{}` is not with the rest of its family `{family}`", sample.name));
        }
        if !helped.contains_key(&family) {
            return Err(format!("`{family}` has no # HELP line"));
        }
        if kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(format!("counter `{}` is {}", sample.name, sample.value));
        }
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !seen.insert(key.clone()) {
            return Err(format!("series {key} appears twice"));
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    // (family, labels without `le`) → buckets in order, and the count.
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    for sample in samples {
        let others = |s: &Sample| format!("{:?}", s.labels.iter().filter(|(k, _)| k != "le").collect::<Vec<_>>());
        if let Some(base) =
            sample.name.strip_suffix("_bucket").filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
        {
            let le = sample.label("le").ok_or_else(|| format!("a bucket of `{base}` without `le`"))?;
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| format!("le=`{le}`"))? };
            buckets.entry((base.to_owned(), others(sample))).or_default().push((le, sample.value));
        } else if let Some(base) =
            sample.name.strip_suffix("_count").filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
        {
            counts.insert((base.to_owned(), others(sample)), sample.value);
        }
    }
    for (key, list) in &buckets {
        if !list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("the buckets of {key:?} are not increasing and cumulative: {list:?}"));
        }
        let last = list.last().copied().unwrap_or_default();
        if last.0 != f64::INFINITY {
            return Err(format!("the buckets of {key:?} do not end in +Inf"));
        }
        if counts.get(key) != Some(&last.1) {
            return Err(format!("{key:?}: +Inf is {} but _count is {:?}", last.1, counts.get(key)));
        }
    }
    Ok(())
}

/// The value of the one sample named `name` whose labels include all of `labels`; `None` if there is none.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> =
        samples.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v))).collect();
    assert!(matching.len() <= 1, "{name}{labels:?} matches {} series: {matching:?}", matching.len());
    matching.first().map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_total Things.\n# TYPE a_total counter\na_total{kind=\"x\",q=\"say \\\"hi\\\"\"} 3\n\
                        # HELP h Hist.\n# TYPE h histogram\nh_bucket{p=\"r\",le=\"1\"} 1\nh_bucket{p=\"r\",le=\"+Inf\"} 2\n\
                        h_sum{p=\"r\"} 4.5\nh_count{p=\"r\"} 2\n";

    #[test]
    fn a_well_formed_exposition_parses() {
        let samples = parse(GOOD).unwrap();
        assert_eq!(value(&samples, "a_total", &[("kind", "x")]), Some(3.0));
        assert_eq!(samples[0].label("q"), Some("say \"hi\""));
        assert_eq!(value(&samples, "h_count", &[("p", "r")]), Some(2.0));
    }

    #[test]
    fn broken_expositions_are_refused() {
        for (broken, why) in [
            ("a 1\n", "no TYPE"),
            ("# TYPE a counter\na 1\n", "no HELP"),
            ("# HELP a x\n# TYPE a counter\na -1\n", "negative counter"),
            ("# HELP a x\n# TYPE a gauge\na{b=\"1} 1\n", "unterminated"),
            ("# HELP a x\n# TYPE a gauge\na{b=1} 1\n", "unquoted"),
            ("# HELP a x\n# TYPE a gauge\na 1\na 2\n", "repeated series"),
            ("# HELP a x\n# TYPE a gauge\n# HELP b x\n# TYPE b gauge\nb 1\na 1\n", "family split"),
            (
                "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "not cumulative",
            ),
            ("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", "no +Inf"),
            ("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n", "count differs"),
        ] {
            assert!(parse(broken).is_err(), "{why}: {broken}");
        }
    }
}
