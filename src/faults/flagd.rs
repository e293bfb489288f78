//! flagd's flag definition file (<https://flagd.dev/reference/flag-definitions/>), the format
//! of the OpenTelemetry Demo's fault flags, read into the faults Draw64 knows. Pure: the text
//! in, the settings or a reason out.
//!
//! Each flag names its `variants` and the `defaultVariant` that is in force; `"state":
//! "DISABLED"` turns it off. Targeting rules are refused rather than ignored: a fault applies to
//! the whole instance, and a rule that looked like it narrowed the fault would not.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Fault, Setting};

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    flags: BTreeMap<String, Flag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Flag {
    state: State,
    variants: BTreeMap<String, Value>,
    default_variant: String,
    #[serde(default)]
    targeting: Option<Value>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
enum State {
    Enabled,
    Disabled,
}

/// A fault as a file sets it: the value in force and the variant it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct FromFile {
    pub setting: Setting,
    pub variant: String,
}

/// The faults a flag file sets (flags absent, disabled or on an off variant are not listed).
pub fn parse(text: &str) -> Result<BTreeMap<Fault, FromFile>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not a flagd flag file: {e}"))?;
    let unknown: Vec<&str> = file.flags.keys().map(String::as_str).filter(|k| Fault::from_key(k).is_none()).collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = Fault::ALL.iter().map(|f| f.key()).collect();
        return Err(format!("unknown flags {}: draw64 knows {}", unknown.join(", "), known.join(", ")));
    }
    let mut faults = BTreeMap::new();
    for (key, flag) in file.flags {
        let fault = Fault::from_key(&key).expect("checked above");
        if flag.targeting.as_ref().is_some_and(|t| t.as_object().is_none_or(|o| !o.is_empty())) {
            return Err(format!(
                "{key}: targeting rules are not evaluated here (a fault applies to the whole instance)"
            ));
        }
        for (name, value) in &flag.variants {
            Setting::parse(fault, value).map_err(|why| format!("{key}: variant {name:?}: {why}"))?;
        }
        let Some(value) = flag.variants.get(&flag.default_variant) else {
            return Err(format!("{key}: the default variant {:?} is not among its variants", flag.default_variant));
        };
        let setting = Setting::parse(fault, value).map_err(|why| format!("{key}: {why}"))?;
        if flag.state == State::Enabled && !setting.is_off() {
            faults.insert(fault, FromFile { setting, variant: flag.default_variant });
        }
    }
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_variant_of_each_enabled_flag_is_in_force() {
        let text = r#"{
          "$schema": "https://flagd.dev/schema/v0/flags.json",
          "flags": {
            "failingCommits": {"state": "ENABLED", "variants": {"off": 0, "20%": 0.2}, "defaultVariant": "20%"},
            "slowCommits": {"state": "ENABLED", "variants": {"off": {"delayMs": 0, "share": 0},
                            "on": {"delayMs": 300, "share": 0.5}}, "defaultVariant": "off"},
            "failingReadiness": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "cpuBurn": {"state": "ENABLED", "variants": {"off": 0, "on": 500}, "defaultVariant": "on", "targeting": {}}
          }
        }"#;
        let faults = parse(text).unwrap();
        assert_eq!(faults.len(), 2, "{faults:?}");
        assert_eq!(faults[&Fault::FailingCommits], FromFile { setting: Setting::Share(0.2), variant: "20%".into() });
        assert_eq!(faults[&Fault::CpuBurn].setting, Setting::Amount(500.0));
        assert!(parse(r#"{"flags": {}}"#).unwrap().is_empty());
    }

    #[test]
    fn a_file_with_a_mistake_is_refused_with_the_reason() {
        let flag = |key: &str, variants: &str, default: &str| {
            format!(
                r#"{{"flags": {{"{key}": {{"state": "ENABLED", "variants": {variants}, "defaultVariant": "{default}"}}}}}}"#
            )
        };
        let cases = [
            (flag("paymentFailure", r#"{"on": 1}"#, "on"), "unknown flags paymentFailure"),
            (flag("failingCommits", r#"{"on": 1.5}"#, "on"), "between 0 and 1"),
            (flag("failingCommits", r#"{"on": 0.5}"#, "off"), "not among its variants"),
            (flag("failingReadiness", r#"{"on": "yes"}"#, "on"), "true or false"),
            (flag("slowCommits", r#"{"on": {"delayMs": 100}}"#, "on"), "share"),
            (flag("memoryLeak", r#"{"on": 1000}"#, "on"), "at most 256"),
            ("{".to_owned(), "not a flagd flag file"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let targeted = r#"{"flags": {"cpuBurn": {"state": "ENABLED", "variants": {"on": 5}, "defaultVariant": "on",
            "targeting": {"if": [true, "on"]}}}}"#;
        assert!(parse(targeted).unwrap_err().contains("targeting"));
    }
}
