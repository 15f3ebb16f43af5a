//! Framework profiles (`--framework NAME`, `--profile FILE`): a small TOML file whose
//! `[settings]` are defaults of `llm-mem estimate`'s own settings — so a profile can only
//! switch mechanisms the estimator models, each documented where its setting is. A
//! value the user gives (flag, `--config`, `--train-args`) wins over the profile's.
//!
//! ```toml
//! schema_version = 1
//! name = "hf-trainer"
//! description = "..."
//! [settings]
//! fsdp_version = 1
//! fsdp_upcast = true
//! ```
//!
//! The shipped profiles live in `src/workload/profiles/` and are embedded in the binary.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::workload::settings::{Origin, Settings};

/// The profile schema this version reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The shipped profiles: (name, TOML text).
pub const SHIPPED: &[(&str, &str)] = &[
    ("hf-trainer", include_str!("profiles/hf-trainer.toml")),
    ("accelerate", include_str!("profiles/accelerate.toml")),
    ("litgpt", include_str!("profiles/litgpt.toml")),
    ("torchtune", include_str!("profiles/torchtune.toml")),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// The defaults, each with the origin `profile <name>: <key>`.
    pub settings: Settings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    schema_version: u32,
    name: String,
    description: String,
    #[serde(default)]
    settings: toml::Table,
}

impl Profile {
    /// Parses a profile's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile> {
        let err = |message: String| Error::Config {
            path: origin.to_string(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(format!("not a profile: {e}")))?;
        if raw.schema_version != SCHEMA_VERSION {
            return Err(err(format!(
                "schema_version {}; this llm-mem reads profile schema {SCHEMA_VERSION}",
                raw.schema_version
            )));
        }
        if raw.name.trim().is_empty() {
            return Err(err("name is empty".into()));
        }
        let at = format!("profile {}", raw.name);
        let mut settings = Settings::default();
        for (k, v) in &raw.settings {
            let key = k.replace('-', "_");
            if matches!(key.as_str(), "framework" | "model") {
                return Err(err(format!(
                    "settings.{k}: a profile sets mechanisms, not the model or another profile"
                )));
            }
            let json = serde_json::to_value(v).map_err(|e| err(format!("settings.{k}: {e}")))?;
            if !settings.set_json(&key, &json, Origin::file(&at, k))? {
                return Err(err(format!(
                    "settings.{k}: not a setting of llm-mem estimate"
                )));
            }
        }
        Ok(Profile {
            name: raw.name,
            description: raw.description,
            settings,
        })
    }

    /// A shipped profile by name.
    pub fn shipped(name: &str) -> Result<Profile> {
        let (_, text) = SHIPPED
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| Error::invalid("--framework", name, shipped_names()))?;
        Profile::parse(text, &format!("shipped profile {name}"))
    }
}

/// The shipped profiles' names, for messages.
pub fn shipped_names() -> String {
    SHIPPED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_sets_only_settings() {
        for (name, _) in SHIPPED {
            let p = Profile::shipped(name).unwrap();
            assert_eq!(&p.name, name);
            assert!(!p.settings.origins.is_empty(), "{name} sets nothing");
            for o in p.settings.origins.values() {
                assert!(
                    o.to_string().starts_with(&format!("profile {name}: ")),
                    "{o}"
                );
            }
        }
    }

    #[test]
    fn bad_profiles_are_errors_naming_the_problem() {
        let cases = [
            ("schema_version = 2\nname = \"x\"\ndescription = \"\"\n", "schema_version 2"),
            ("schema_version = 1\nname = \"x\"\ndescription = \"\"\n[settings]\nfsdp_versio = 1\n", "settings.fsdp_versio: not a setting"),
            ("schema_version = 1\nname = \"x\"\ndescription = \"\"\n[settings]\nfsdp_version = 3\n", "fsdp_version"),
            ("schema_version = 1\nname = \"x\"\ndescription = \"\"\n[settings]\nmodel = \"gpt2\"\n", "not the model"),
            ("schema_version = 1\nname = \"x\"\n", "description"),
            ("schema_version = 1\nname = \"x\"\ndescription = \"\"\nextra = 1\n", "extra"),
        ];
        for (text, needle) in cases {
            let e = Profile::parse(text, "p.toml").unwrap_err().to_string();
            assert!(e.contains("p.toml") || e.contains("profile x"), "{e}");
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = Profile::shipped("axolotl").unwrap_err().to_string();
        assert!(
            e.contains("axolotl") && e.contains("hf-trainer, accelerate"),
            "{e}"
        );
    }
}
