//! The settings flags: one clap argument per row of the settings table
//! (`llm_mem::workload::settings::SETTINGS`), so a new setting needs no code here.
//! Values are parsed into their typed fields, each marked with its flag as origin;
//! errors name the flag, the value and what is accepted.

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde_json::Value;

use llm_mem::workload::settings::{FlagKind, Origin, Settings, SETTINGS};

/// Every settings flag the user typed.
#[derive(Debug, Clone, Default)]
pub struct SettingFlags(pub Settings);

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut s = Settings::default();
        let invalid = |e: llm_mem::Error| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        };
        for i in SETTINGS {
            let origin = Origin::Flag(i.flag);
            match i.kind {
                FlagKind::Value => {
                    if let Some(v) = m.get_one::<String>(i.key) {
                        s.set_text(i.key, v, origin).map_err(invalid)?;
                    }
                }
                FlagKind::Switch(value) => {
                    if m.get_flag(i.key) {
                        s.set_json(i.key, &Value::Bool(value), origin)
                            .map_err(invalid)?;
                    }
                }
            }
        }
        Ok(SettingFlags(s))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = SettingFlags::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for SettingFlags {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS.iter().fold(cmd, |cmd, i| {
            let long = i.flag.trim_start_matches("--");
            let arg = Arg::new(i.key).long(long).help(i.help);
            let arg = match i.kind {
                // the value is parsed in `from_arg_matches`, so that its error names
                // the flag, the value and the accepted range the way every other
                // error does; numbers may be negative (`--batch -1` is an invalid
                // value, not an unknown flag), names may not start with `-`
                FlagKind::Value => arg
                    .action(ArgAction::Set)
                    .allow_hyphen_values(!matches!(i.key, "model" | "gpu")),
                FlagKind::Switch(_) => arg.action(ArgAction::SetTrue),
            };
            cmd.arg(if i.key == "model" {
                arg.short('m')
            } else {
                arg
            })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        SettingFlags::augment_args(cmd)
    }
}
