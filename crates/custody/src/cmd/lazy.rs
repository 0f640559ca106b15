//! Subcommands whose arguments clap builds only when the command line names
//! them.
//!
//! Clap's derive builds every subcommand's every argument before it parses
//! anything: for `custody` that was a third of a `custody run`'s start (the
//! client's start is on every run's path). Wrapping a variant's arguments in
//! [`Lazy`] leaves the subcommand's name and help line in the tree and hands
//! the rest to [`clap::Command::defer`], which clap calls when it builds that
//! subcommand: when the command line names it, or when help, the man page or
//! completions need the whole tree (`Command::build`).
//!
//! The man page and shell completions are made from a tree built at once
//! ([`build_eagerly`]): clap copies its `help` subcommand's tree from the
//! subcommands as they are when the top is built, before deferred parts are.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgMatches, Args, Command, FromArgMatches, Subcommand};

/// Whether trees built from now on build every subcommand at once.
static EAGER: AtomicBool = AtomicBool::new(false);

/// From now on, build every subcommand's arguments with the tree, as clap's
/// derive does (for the man page and completions, which walk all of it).
pub fn build_eagerly() {
    EAGER.store(true, Ordering::Relaxed);
}

fn eager() -> bool {
    EAGER.load(Ordering::Relaxed)
}

/// `T`'s arguments (or subcommands), added to its subcommand only when clap
/// builds that subcommand.
#[derive(Debug)]
pub struct Lazy<T>(pub T);

impl<T: FromArgMatches> FromArgMatches for Lazy<T> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(m).map(Lazy)
    }

    fn from_arg_matches_mut(m: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(m).map(Lazy)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(m)
    }

    fn update_from_arg_matches_mut(&mut self, m: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(m)
    }
}

impl<T: Args> Args for Lazy<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(cmd: Command) -> Command {
        later(cmd, T::augment_args, |cmd| {
            keeping_about(cmd, T::augment_args)
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        let add = T::augment_args_for_update;
        later(cmd, add, |cmd| {
            keeping_about(cmd, T::augment_args_for_update)
        })
    }
}

impl<T: Subcommand> Subcommand for Lazy<T> {
    fn augment_subcommands(cmd: Command) -> Command {
        later(cmd, T::augment_subcommands, |cmd| {
            keeping_about(cmd, T::augment_subcommands)
        })
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        let add = T::augment_subcommands_for_update;
        later(cmd, add, |cmd| {
            keeping_about(cmd, T::augment_subcommands_for_update)
        })
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

/// `add` on `cmd` now when building eagerly, else `deferred` when clap
/// builds `cmd` (`deferred` is `add` through [`keeping_about`]: clap takes a
/// plain function, so the closure cannot capture `add`).
fn later(cmd: Command, add: fn(Command) -> Command, deferred: fn(Command) -> Command) -> Command {
    if eager() {
        add(cmd)
    } else {
        cmd.defer(deferred)
    }
}

/// Runs `add` on `cmd` as if `cmd` were new, so help reads as it would
/// built eagerly: `add`'s options are numbered for display from the first
/// (a hidden flag added to the subcommand before took that place), and the
/// variant's help text is kept (built eagerly, the variant's doc comment is
/// applied after its type's own, which a struct's doc comment also sets;
/// deferred, the type's would come last).
fn keeping_about(cmd: Command, add: fn(Command) -> Command) -> Command {
    let about = cmd.get_about().cloned();
    let long_about = cmd.get_long_about().cloned();
    let cmd = add(cmd.next_display_order(0));
    match (about, long_about) {
        (None, _) => cmd,
        (Some(about), Some(long)) => cmd.about(about).long_about(long),
        (Some(about), None) => cmd.about(about).long_about(None::<&str>),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand path of `cmd`, outermost first.
    fn paths(cmd: &mut Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        cmd.build();
        for sub in cmd.get_subcommands_mut() {
            if sub.get_name() == "help" {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push(path.clone());
            paths(sub, &path, out);
        }
    }

    /// What a user sees for `custody PATH… FLAG`: the text and whether it
    /// was an error.
    fn shown(path: &[String], flag: &str) -> String {
        let argv = std::iter::once("custody")
            .chain(path.iter().map(String::as_str))
            .chain(std::iter::once(flag));
        match super::super::command().try_get_matches_from(argv) {
            Ok(m) => format!("parsed: {:?}", m.subcommand_name()),
            Err(e) => format!("{:?}: {}", e.kind(), e.render()),
        }
    }

    fn everything_shown() -> Vec<String> {
        let mut all = vec![vec![]];
        paths(&mut super::super::command(), &[], &mut all);
        let mut seen = Vec::new();
        for path in &all {
            for flag in ["--help", "-h", "--no-such-flag", "--json"] {
                seen.push(format!("{path:?} {flag}\n{}", shown(path, flag)));
            }
        }
        seen
    }

    /// Deferring the subcommands' arguments changes nothing a user sees:
    /// every subcommand's help, a usage error and a global flag read the
    /// same as from the tree clap's derive builds at once. (Completions are
    /// not: clap's `help` subcommand copies the tree unbuilt, which is why
    /// `completions` and `man` build eagerly. Under
    /// `cargo test` another test may have switched this process to eager
    /// building already; nextest runs each test in a process of its own.)
    #[test]
    fn the_deferred_tree_reads_as_the_eager_one() {
        let lazy = everything_shown();
        build_eagerly();
        let eager = everything_shown();
        assert!(lazy.len() > 60, "{} paths", lazy.len());
        for (l, e) in lazy.iter().zip(&eager) {
            assert_eq!(l, e);
        }
        assert_eq!(lazy.len(), eager.len());
    }

    /// The deferred tree leaves a subcommand's arguments out until it is
    /// built: what makes `custody run` start faster.
    #[test]
    fn a_subcommand_is_built_only_when_named() {
        let cmd = super::super::command();
        let run = cmd
            .get_subcommands()
            .find(|s| s.get_name() == "run")
            .expect("run");
        if !eager() {
            assert_eq!(run.get_arguments().count(), 1, "only the hidden flag");
        }
        let m = cmd
            .try_get_matches_from(["custody", "run", "-e", "dev", "--", "true"])
            .expect("parses");
        let (name, sub) = m.subcommand().expect("a subcommand");
        assert_eq!(name, "run");
        assert!(
            sub.contains_id("environments"),
            "run's own arguments were built"
        );
    }
}
