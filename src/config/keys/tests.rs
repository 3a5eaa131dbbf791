//! The key table: names, flags and the reload classification.

use super::*;

#[test]
fn reload_classification_comes_from_the_table() {
    let old = ServeConfig::default();
    let mut new = old.clone();
    new.log_level = "debug".into();
    assert_eq!(key("log_level").unwrap().reload, Reload::Live);
    assert!(restart_needed(&old, &new).is_empty(), "log_level is live");
    new.log_format = crate::config::LogFormat::Json;
    assert_eq!(restart_needed(&old, &new), ["log_format"]);
    new.access.deny.push("10.0.0.0/8".parse().unwrap());
    new.lcid = 1031;
    assert_eq!(restart_needed(&old, &new), ["lcid", "log_format"]);
    let changed: Vec<_> = changed(&old, &new).iter().map(|k| k.name).collect();
    assert_eq!(changed, ["lcid", "deny", "log_level", "log_format"]);
}

#[test]
fn a_change_of_each_key_is_seen_as_that_key() {
    // Each key set to a value other than the default is seen as
    // changed by its own key, and by no other.
    for k in KEYS {
        let mut cfg = ServeConfig::default();
        let v = match k.kind {
            Kind::Int => Value::Integer(k.get(&cfg).as_integer().unwrap() + 1),
            Kind::Bool => Value::Boolean(!k.get(&cfg).as_bool().unwrap()),
            _ => continue,
        };
        k.set(&mut cfg, &v).unwrap();
        let changed: Vec<_> = changed(&ServeConfig::default(), &cfg)
            .iter()
            .map(|k| k.name)
            .filter(|n| *n == k.name || *n != "ndr64") // host_build implies it
            .collect();
        assert_eq!(changed, [k.name]);
    }
}

#[test]
fn names_and_flags() {
    assert_eq!(
        key("max_clock_skew_minutes").unwrap().flag(),
        "max-clock-skew-minutes"
    );
    assert_eq!(key("data_dir").unwrap().env_var(), "KMSD_DATA_DIR");
    let mut names: Vec<_> = KEYS.iter().map(|k| k.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), KEYS.len(), "a key declared twice");
}
