//! The `filters` query parameter: a JSON object of names to values, which
//! the docker CLI writes as `{"name": {"value": true}}` and the Python SDK
//! as `{"name": ["value"]}`. Both mean "any of these values".

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses the parameter (absent or empty: no filter).
    pub fn parse(raw: Option<&str>) -> Result<Filters, String> {
        let Some(raw) = raw.filter(|s| !s.trim().is_empty()) else { return Ok(Filters::default()) };
        let v: Value = serde_json::from_str(raw).map_err(|e| format!("invalid filter: {e}"))?;
        let Value::Object(map) = v else { return Err("invalid filter: expected a JSON object".into()) };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let values = match v {
                Value::Object(m) => {
                    m.into_iter().filter(|(_, on)| on.as_bool() != Some(false)).map(|(k, _)| k).collect()
                }
                Value::Array(a) => a
                    .into_iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s),
                        other => Err(format!("invalid filter {k:?}: {other} is not a string")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Value::String(s) => vec![s],
                other => return Err(format!("invalid filter {k:?}: {other}")),
            };
            out.insert(k, values);
        }
        Ok(Filters(out))
    }

    /// Refuses a filter name not in `known`, as the Engine does.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("invalid filter '{k}'")),
            None => Ok(()),
        }
    }

    pub fn values(&self, name: &str) -> Option<&[String]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// True if there is no `name` filter or `f` holds for one of its values.
    pub fn any(&self, name: &str, f: impl Fn(&str) -> bool) -> bool {
        self.values(name).is_none_or(|vs| vs.iter().any(|v| f(v)))
    }

    /// The `label` filter (`key` or `key=value`) against a label map.
    pub fn labels(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.values(name).is_none_or(|vs| {
            vs.iter().all(|want| match want.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
                None => labels.contains_key(want.as_str()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_to_the_same_filter() {
        let cli = Filters::parse(Some(r#"{"service":{"web":true},"desired-state":{"running":true}}"#)).unwrap();
        let sdk = Filters::parse(Some(r#"{"service":["web"],"desired-state":["running"]}"#)).unwrap();
        assert_eq!(cli, sdk);
        assert!(cli.any("service", |v| v == "web"));
        assert!(!cli.any("service", |v| v == "db"));
        assert!(cli.any("node", |_| false), "no such filter: everything passes");
        assert_eq!(Filters::parse(None).unwrap(), Filters::default());
        assert!(Filters::parse(Some("[1]")).is_err());
        assert!(Filters::parse(Some("{")).is_err());
        assert_eq!(cli.only(&["service"]).unwrap_err(), "invalid filter 'desired-state'");
    }

    #[test]
    fn labels_match_key_or_key_and_value() {
        let f = Filters::parse(Some(r#"{"label":["a","b=2"]}"#)).unwrap();
        let mut l = BTreeMap::new();
        l.insert("a".to_string(), "x".to_string());
        assert!(!f.labels("label", &l));
        l.insert("b".to_string(), "2".to_string());
        assert!(f.labels("label", &l));
    }
}
