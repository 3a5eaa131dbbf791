//! Configuration layers: a TOML file (`--config`), `KMSD_*` environment
//! variables and command-line flags, each a set of key values checked
//! against the key table when read, laid over one another, then applied to
//! the defaults of [`ServeConfig`] and validated.

#[cfg(doc)]
use super::Kind;
use super::keys::{KEYS, Key, key};
use super::{ConfigError, ServeConfig};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use toml::Value;

/// One configuration layer: the keys it sets, with values of their kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    values: BTreeMap<&'static str, Value>,
}

/// The environment variable naming the configuration file (not a key).
pub const CONFIG_ENV: &str = "KMSD_CONFIG";

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl Settings {
    /// Parses a TOML document; unknown keys and values of the wrong kind
    /// are refused by name.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            bad("config", format!("{}: {}", origin.display(), e.message()))
        })?;
        let mut out = Self::default();
        for (name, value) in table {
            let Some(k) = key(&name) else {
                let hint = closest(&name)
                    .map_or(String::new(), |k| format!("; did you mean `{}`?", k.name));
                return Err(bad(
                    "config",
                    format!("{}: unknown key `{name}`{hint}", origin.display()),
                ));
            };
            k.kind
                .check(&value)
                .map_err(|e| bad(k.name, format!("{}: {e}", origin.display())))?;
            out.values.insert(k.name, value);
        }
        Ok(out)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, path)
    }

    /// The `KMSD_<KEY>` variables among `vars`, and warnings for the
    /// `KMSD_*` variables that are not keys: those are ignored (Kubernetes,
    /// for one, sets `KMSD_SERVICE_HOST`, `KMSD_PORT`, ... in every pod
    /// when a Service is named kmsd), each near-miss of a key named with the
    /// key it looks like, the rest in one warning. `KMSD_CONFIG` names the
    /// file and is no key. A value that does not parse is an error naming
    /// its key.
    pub fn from_env<K, V>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(Self, Vec<String>), ConfigError>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut out = Self::default();
        let mut warnings = Vec::new();
        let mut ignored = Vec::new();
        for (name, value) in vars {
            let (name, value) = (name.into(), value.into());
            let Some(name) = name.to_str().filter(|n| n.starts_with("KMSD_")) else {
                continue;
            };
            if name == CONFIG_ENV {
                continue;
            }
            let lower = name["KMSD_".len()..].to_ascii_lowercase();
            let Some(k) = key(&lower) else {
                let k8s =
                    lower.starts_with("service_") || lower == "port" || lower.starts_with("port_");
                match closest(&lower).filter(|_| !k8s) {
                    Some(k) => warnings.push(format!(
                        "ignoring {name}: not a kmsd setting; did you mean {}?",
                        k.env_var()
                    )),
                    None => ignored.push(name.to_owned()),
                }
                continue;
            };
            let value = value
                .to_str()
                .ok_or_else(|| bad(k.name, format!("{name}: the value is not UTF-8")))?;
            let v = k
                .kind
                .parse(&[value])
                .map_err(|e| bad(k.name, format!("{name}={value:?}: {e}")))?;
            out.values.insert(k.name, v);
        }
        if !ignored.is_empty() {
            ignored.sort();
            warnings.push(format!(
                "ignoring environment variables that are not kmsd settings: {}",
                ignored.join(", ")
            ));
        }
        Ok((out, warnings))
    }

    /// Sets `key` from values written as the environment and flags write
    /// them (see [`Kind::parse`](super::Kind::parse)); `origin` names where they came from in an
    /// error (e.g. `--listen`).
    pub fn set_str(
        &mut self,
        name: &str,
        values: &[&str],
        origin: &str,
    ) -> Result<(), ConfigError> {
        let k = key(name).ok_or_else(|| {
            bad(
                "config",
                format!("{origin}: `{name}` is not a configuration key"),
            )
        })?;
        let v = k
            .kind
            .parse(values)
            .map_err(|e| bad(k.name, format!("{origin}: {e}")))?;
        self.values.insert(k.name, v);
        Ok(())
    }

    /// Sets `key` to a TOML value, checked against the key's kind.
    pub fn set(&mut self, name: &str, value: Value) -> Result<(), ConfigError> {
        let k = key(name)
            .ok_or_else(|| bad("config", format!("`{name}` is not a configuration key")))?;
        k.kind.check(&value).map_err(|e| bad(k.name, e))?;
        self.values.insert(k.name, value);
        Ok(())
    }

    /// The value this layer gives `key`, if any.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// This layer with `top` laid over it: top's keys win; a table key
    /// (`epids`) is merged entry by entry. It cannot fail: every value was
    /// checked against its key when its layer was read, where an error
    /// names the key and the layer.
    pub fn overlay(mut self, top: Self) -> Self {
        for (name, v) in top.values {
            match (self.values.get_mut(name), v) {
                (Some(Value::Table(base)), Value::Table(over)) => base.extend(over),
                (_, v) => {
                    self.values.insert(name, v);
                }
            }
        }
        self
    }

    /// The keys this layer sets, in table order.
    pub fn keys_set(&self) -> Vec<&'static str> {
        KEYS.iter()
            .map(|k| k.name)
            .filter(|n| self.values.contains_key(n))
            .collect()
    }

    /// Applies this layer to `cfg`, in table order; the first bad value is
    /// named by its key.
    pub fn apply(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        for k in KEYS {
            if let Some(v) = self.values.get(k.name) {
                k.set(cfg, v).map_err(|e| bad(k.name, e))?;
            }
        }
        Ok(())
    }

    /// The defaults with `layers` laid over each other in order, validated.
    pub fn resolve(layers: &[&Self]) -> Result<ServeConfig, ConfigError> {
        let merged = layers
            .iter()
            .fold(Self::default(), |acc, l| acc.overlay((*l).clone()));
        let mut cfg = ServeConfig::default();
        merged.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Edit distance (insertions, deletions, substitutions) between two names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The key closest to `name` if it is within two edits.
fn closest(name: &str) -> Option<&'static Key> {
    KEYS.iter()
        .map(|k| (edit_distance(name, k.name), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The configuration of `kmsd serve`: the file (if any) < the `KMSD_*`
/// environment < the flags, over the defaults.
#[derive(Debug, Clone)]
pub struct Layers {
    file: Option<PathBuf>,
    flags: Settings,
}

/// A resolved configuration, with the warnings its reading produced (the
/// ignored environment variables), for the caller to log once logging is
/// set up.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub cfg: ServeConfig,
    pub warnings: Vec<String>,
}

impl Layers {
    /// `file` is the TOML file (`--config`/`KMSD_CONFIG`); `flags` the
    /// command line's layer.
    pub fn new(file: Option<PathBuf>, flags: Settings) -> Self {
        Self { file, flags }
    }

    /// The configuration file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the file and the process environment (again: call it on
    /// SIGHUP) and resolves all layers.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        self.resolve_with_env(std::env::vars_os())
    }

    /// [`Layers::resolve`] with the given environment instead of the
    /// process's.
    pub fn resolve_with_env<K, V>(
        &self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Resolved, ConfigError>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let file = match &self.file {
            Some(p) => Settings::from_file(p)?,
            None => Settings::default(),
        };
        let (env, warnings) = Settings::from_env(vars)?;
        let cfg = Settings::resolve(&[&file, &env, &self.flags])?;
        Ok(Resolved { cfg, warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::effective_toml;

    fn env(pairs: &[(&str, &str)]) -> Result<(Settings, Vec<String>), ConfigError> {
        Settings::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn every_key_reads_back_from_the_effective_toml() {
        let full = effective_toml(&ServeConfig::default());
        let table: toml::Table = toml::from_str(&full).unwrap();
        let mut fields: Vec<&str> = table.keys().map(String::as_str).collect();
        fields.sort_unstable();
        let mut keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        keys.sort_unstable();
        assert_eq!(fields, keys);
        // And the effective TOML round-trips to the same configuration.
        let again =
            Settings::resolve(&[&Settings::from_toml(&full, Path::new("x")).unwrap()]).unwrap();
        assert_eq!(again, ServeConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Settings::from_toml("listne = []", Path::new("k.toml")).unwrap_err();
        assert!(e.problem.contains("listne"), "{e}");
        assert!(e.problem.contains("did you mean `listen`"), "{e}");
        let e =
            Settings::from_toml("activation_interval = \"x\"", Path::new("k.toml")).unwrap_err();
        assert_eq!(e.key, "activation_interval");
        let s = Settings::from_toml("activation_interval = 5", Path::new("k.toml")).unwrap();
        assert_eq!(
            Settings::resolve(&[&s]).unwrap_err().key,
            "activation_interval"
        );
        let s = Settings::from_toml("allow = [\"10.0.0.0/99\"]", Path::new("k.toml")).unwrap();
        assert_eq!(Settings::resolve(&[&s]).unwrap_err().key, "allow");
        let e = env(&[("KMSD_IDLE_TIMEOUT_SECS", "soon")]).unwrap_err();
        assert_eq!(e.key, "idle_timeout_secs");
        assert!(e.problem.contains("KMSD_IDLE_TIMEOUT_SECS"), "{e}");
        for (k, v) in [
            ("log_format", "xml"),
            ("log_level", "info,["),
            ("serve", "Office1997"),
        ] {
            let mut s = Settings::default();
            s.set_str(k, &[v], "test").unwrap();
            assert_eq!(Settings::resolve(&[&s]).unwrap_err().key, k);
        }
    }

    #[test]
    fn did_you_mean_is_the_key_within_two_edits() {
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("lsiten").map(|k| k.name), Some("listen"));
        assert_eq!(closest("service_host").map(|k| k.name), None);
    }

    #[test]
    fn unknown_environment_variables_are_ignored_with_a_warning() {
        let (s, warnings) = env(&[
            ("KMSD_LISTN", "127.0.0.1:1"),
            ("KMSD_SERVICE_HOST", "10.0.0.1"),
            ("KMSD_SERVICE_PORT", "1688"),
            ("KMSD_PORT", "tcp://10.0.0.1:1688"),
            ("KMSD_PORT_1688_TCP_ADDR", "10.0.0.1"),
            ("KMSD_CONFIG", "/etc/kmsd/kmsd.toml"),
            ("KMSD_LCID", "1031"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(s.keys_set(), ["lcid"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "ignoring KMSD_LISTN: not a kmsd setting; did you mean KMSD_LISTEN?"
        );
        // Kubernetes' service variables: one warning, no suggestion; and
        // never KMSD_CONFIG.
        assert!(!warnings[1].contains("did you mean"), "{}", warnings[1]);
        for v in [
            "KMSD_SERVICE_HOST",
            "KMSD_SERVICE_PORT",
            "KMSD_PORT,",
            "KMSD_PORT_1688_TCP_ADDR",
        ] {
            assert!(warnings[1].contains(v), "{v}: {}", warnings[1]);
        }
        assert!(warnings.iter().all(|w| !w.contains("KMSD_CONFIG")));
        // Nothing to warn about, no warning.
        assert_eq!(
            env(&[("KMSD_CONFIG", "x")]).unwrap().1,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_naming_its_key() {
        use std::os::unix::ffi::OsStringExt;
        let e = Settings::from_env([(
            OsString::from("KMSD_DATA_DIR"),
            OsString::from_vec(vec![b'/', 0xFF]),
        )])
        .unwrap_err();
        assert_eq!(e.key, "data_dir");
        // A variable that is no kmsd business may be anything.
        let (s, w) = Settings::from_env([(
            OsString::from_vec(vec![b'X', 0xFF]),
            OsString::from_vec(vec![0xFF]),
        )])
        .unwrap();
        assert_eq!((s, w), (Settings::default(), vec![]));
    }

    #[test]
    fn layers_override_in_order() {
        let file = Settings::from_toml(
            "activation_interval = 60\nrenewal_interval = 1440\nserve = [\"Windows\"]\n\
             [epids]\nOffice2021 = \"03612-00206-684-137669-03-1033-17763.0000-2972018\"",
            Path::new("f"),
        )
        .unwrap();
        let (env, _) = env(&[
            ("KMSD_RENEWAL_INTERVAL", "2880"),
            ("KMSD_ALLOW", "203.0.113.0/24, 198.51.100.0/24"),
            (
                "KMSD_EPIDS",
                "Office2019=03612-00206-684-137669-03-1033-17763.0000-2972018",
            ),
            ("PATH", "/bin"),
        ])
        .unwrap();
        let mut cli = Settings::default();
        cli.set_str("activation_interval", &["30"], "--activation-interval")
            .unwrap();
        let merged = file.clone().overlay(env.clone()).overlay(cli.clone());
        let cfg = Settings::resolve(&[&file, &env, &cli]).unwrap();
        assert_eq!(Settings::resolve(&[&merged]).unwrap(), cfg);
        assert_eq!(cfg.activation_interval, 30, "flag over file");
        assert_eq!(cfg.renewal_interval, 2880, "environment over file");
        assert_eq!(cfg.served_groups, vec!["Windows".to_owned()]);
        assert!(cfg.access.permits("203.0.113.9".parse().unwrap()));
        assert!(
            cfg.access.permits("10.0.0.1".parse().unwrap()),
            "defaults kept"
        );
        assert_eq!(
            cfg.epids.keys().collect::<Vec<_>>(),
            ["Office2019", "Office2021"],
            "ePID tables merge across layers"
        );
    }

    /// The old `overlay` turned a layer it could not round-trip into an
    /// empty one (every key of file, environment and flags silently
    /// dropped). Now a value is checked where its layer is read, so the
    /// error names the key and the layer, and overlay keeps every key.
    #[test]
    fn overlay_loses_nothing_and_errors_surface_where_they_arise() {
        let mut bottom = Settings::default();
        bottom.set_str("lcid", &["1031"], "file").unwrap();
        bottom.set_str("listen", &["127.0.0.1:1"], "file").unwrap();
        let mut top = Settings::default();
        top.set_str("lcid", &["1036"], "flag").unwrap();
        top.set_str("deny", &["10.0.0.0/8"], "flag").unwrap();
        let merged = bottom.overlay(top);
        assert_eq!(merged.keys_set(), ["listen", "lcid", "deny"]);
        assert_eq!(merged.get("lcid"), Some(&Value::Integer(1036)));
        // Wrong kinds are refused when the layer is read, by key.
        let mut s = Settings::default();
        assert_eq!(
            s.set("lcid", Value::String("x".into())).unwrap_err().key,
            "lcid"
        );
        assert_eq!(
            s.set_str("lcid", &["-1"], "--lcid").unwrap_err().key,
            "lcid"
        );
        assert_eq!(
            s.set_str("ndr64", &["maybe"], "--ndr64").unwrap_err().key,
            "ndr64"
        );
        assert_eq!(
            s.set_str("epids", &["Windows"], "--epids").unwrap_err().key,
            "epids"
        );
        assert_eq!(
            s.set_str("nope", &["1"], "--nope").unwrap_err().key,
            "config"
        );
        // A value in range for its kind but not for its field is named when applied.
        s.set_str("lcid", &["99999999999"], "--lcid").unwrap();
        assert_eq!(Settings::resolve(&[&s]).unwrap_err().key, "lcid");
    }

    #[test]
    fn an_older_host_build_implies_its_ndr64_unless_set() {
        let s = Settings::from_toml("host_build = 7601", Path::new("f")).unwrap();
        assert!(!Settings::resolve(&[&s]).unwrap().ndr64);
        let mut flags = Settings::default();
        flags.set_str("ndr64", &["on"], "--ndr64").unwrap();
        // Explicit ndr64 anywhere wins over the implication: here it is
        // refused, as build 7601 hosts never negotiated NDR64.
        assert_eq!(Settings::resolve(&[&flags, &s]).unwrap_err().key, "ndr64");
    }

    #[test]
    fn layers_resolve_the_file_and_the_given_environment_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsd.toml");
        std::fs::write(&path, "lcid = 1031\nlog_format = \"json\"\n").unwrap();
        let mut flags = Settings::default();
        flags
            .set_str("renewal_interval", &["60"], "--renewal-interval")
            .unwrap();
        let layers = Layers::new(Some(path.clone()), flags);
        let no_env: [(String, String); 0] = [];
        let r = layers.resolve_with_env(no_env.clone()).unwrap();
        assert_eq!(
            (r.cfg.lcid, r.cfg.log_format, r.cfg.renewal_interval),
            (1031, crate::config::LogFormat::Json, 60)
        );
        std::fs::write(&path, "lcid = 1036\n").unwrap();
        let r2 = layers
            .resolve_with_env([("KMSD_LOG_LEVEL", "debug"), ("KMSD_SERVICE_HOST", "x")])
            .unwrap();
        assert_eq!((r2.cfg.lcid, r2.cfg.log_level.as_str()), (1036, "debug"));
        assert_eq!(r2.warnings.len(), 1);
        assert_eq!(
            crate::config::restart_needed(&r.cfg, &r2.cfg),
            ["lcid", "log_format"]
        );
        std::fs::write(&path, "lcid = [").unwrap();
        assert_eq!(layers.resolve_with_env(no_env).unwrap_err().key, "config");
    }
}
