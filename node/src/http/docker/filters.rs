//! Docker's list filters: `?filters={"name":{"api":true},"label":{"k=v":true}}`, or the
//! older `{"name":["api"]}` form. Values of one key are alternatives; keys must all match.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filters(BTreeMap<String, BTreeSet<String>>);

impl Filters {
    /// Parses the JSON of `filters=`.
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| format!("invalid filter: filters are not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("invalid filter: filters must be a JSON object")?;
        let mut out = BTreeMap::new();
        for (k, vals) in obj {
            let set: BTreeSet<String> = match vals {
                serde_json::Value::Object(m) => {
                    m.iter().filter(|(_, on)| on.as_bool().unwrap_or(false)).map(|(v, _)| v.clone()).collect()
                }
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => return Err(format!("invalid filter '{k}'")),
            };
            out.insert(k.clone(), set);
        }
        Ok(Self(out))
    }

    /// Refuses a key not in `allowed`, as Docker does.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(format!("invalid filter '{k}'")),
            None => Ok(()),
        }
    }

    /// The values of `key`, if it was given.
    pub(crate) fn get(&self, key: &str) -> Option<&BTreeSet<String>> {
        self.0.get(key).filter(|s| !s.is_empty())
    }

    /// Whether `value` matches any value of `key` exactly (or `key` is not given).
    pub(crate) fn exact(&self, key: &str, value: &str) -> bool {
        self.get(key).is_none_or(|s| s.contains(value))
    }

    /// Whether `value` starts with any value of `key` (or `key` is not given).
    pub(crate) fn prefix(&self, key: &str, value: &str) -> bool {
        self.get(key).is_none_or(|s| s.iter().any(|p| value.starts_with(p.as_str())))
    }

    /// Whether `labels` satisfy every `K` or `K=V` of `key` (Docker: all must hold).
    pub(crate) fn labels(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.get(key).is_none_or(|s| {
            s.iter().all(|want| match want.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
                None => labels.contains_key(want),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_unknown_keys_are_refused() {
        let f = Filters::parse(r#"{"name":{"api":true,"off":false},"label":["a=1","b"]}"#).expect("parse");
        assert!(f.prefix("name", "api-v2") && !f.prefix("name", "off"));
        assert!(f.exact("name", "api") && !f.exact("name", "api-v2"));
        assert!(f.exact("id", "anything"), "an absent key matches everything");
        let labels = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "x".to_string())]);
        assert!(f.labels("label", &labels));
        assert!(!f.labels("label", &BTreeMap::from([("a".to_string(), "1".to_string())])));
        assert_eq!(f.only(&["name"]), Err("invalid filter 'label'".to_string()));
        assert!(f.only(&["name", "label"]).is_ok());
        for bad in ["[", "[1]", r#"{"name":"api"}"#] {
            assert!(Filters::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Filters::parse("").expect("empty"), Filters::default());
    }
}
