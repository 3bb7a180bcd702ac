//! `mount.s3files`: the helper mount(8) runs for `mount -t s3files SOURCE DIR -o OPTIONS`
//! and for /etc/fstab entries of type `s3files` (see "External helpers" in mount(8)). It
//! is this same binary, reached through a link named `mount.s3files` (or
//! `mount.fuse.s3files`), and it turns mount(8)'s call into `s3files mount`:
//!
//! `mount.s3files SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]`
//!
//! Each option maps one-to-one onto a long flag of `s3files mount`: `key=value` is
//! `--key value`, a bare `key` is `--key` (underscores may stand for dashes). mount(8)'s
//! generic options are accepted: `ro` is `--read-only`, the others (`defaults`, `rw`,
//! `noauto`, `nofail`, `_netdev`, `x-systemd.*`, `nodev`, ...) concern mount(8), systemd
//! or the kernel's own flags, which the daemon sets itself, and are ignored. Anything
//! else is an error before anything is mounted (with `-s`, mount(8)'s "sloppy" mode, a
//! warning). A value holding commas (`gids`, `import-rule`) is written in double quotes,
//! as libmount does: `import-rule="prefix=logs/,size-less-than=1MiB"`.
//!
//! The mount always runs in the background: the helper returns once it is live, as
//! `s3files mount` does, and `umount DIR` stops the daemon, which exports what is
//! pending before it exits.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser};

use crate::cli::{Cli, Command};

/// The names under which this binary acts as mount(8)'s helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.s3files", "mount.fuse.s3files"];

/// mount(8)'s exit status for a wrong invocation (its helpers use the same codes).
const USAGE: u8 = 1;

/// mount(8)'s generic options that say nothing to s3files: they are for mount(8) itself
/// (`auto`, `noauto`, `user`, `nofail`...), for the kernel's flags the daemon already
/// chooses (`nodev`, `nosuid`, `noatime`...), or the defaults.
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "silent",
    "loud",
];

/// Whether the program was started under a helper name (argv[0]).
pub fn invoked_as_helper(argv: &[OsString]) -> bool {
    argv.first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .is_some_and(|name| HELPER_NAMES.iter().any(|helper| name == *helper))
}

/// What mount(8) asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCall {
    pub source: OsString,
    pub dir: OsString,
    /// The `-o` options, as given (several `-o` are joined with commas).
    pub options: String,
    /// `-s`: unknown options are warnings, not errors.
    pub sloppy: bool,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
}

/// Parses mount(8)'s helper command line (without the program name).
pub fn parse_call(args: &[OsString]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut sloppy, mut fake) = (false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if !text.starts_with('-') || text == "-" {
            positional.push(arg.clone());
            continue;
        }
        let flags = &text[1..];
        // -o OPTIONS / -oOPTIONS, -t TYPE / -tTYPE; the rest are single-letter switches.
        for (i, letter) in flags.char_indices() {
            match letter {
                'o' | 't' => {
                    let attached = &flags[i + 1..];
                    let value = if attached.is_empty() {
                        args.next()
                            .map(|v| v.to_string_lossy().into_owned())
                            .ok_or_else(|| format!("-{letter} needs a value"))?
                    } else {
                        attached.to_string()
                    };
                    if letter == 'o' {
                        options.push(value);
                    }
                    // -t names our own type (s3files, fuse.s3files): nothing to do.
                    break;
                }
                's' => sloppy = true,
                'f' => fake = true,
                // -n (no mtab: the kernel's table is the only one) and -v (verbose).
                'n' | 'v' => {}
                other => return Err(format!("unknown switch -{other}")),
            }
        }
    }
    let [source, dir] = <[OsString; 2]>::try_from(positional).map_err(|got| {
        format!(
            "expected SOURCE and DIR (mount.s3files s3://BUCKET[/PREFIX] DIR [-o OPTIONS]), got {} argument(s)",
            got.len()
        )
    })?;
    Ok(HelperCall {
        source,
        dir,
        options: options.join(","),
        sloppy,
        fake,
    })
}

/// Splits an option string at commas outside double quotes, dropping the quotes.
pub fn split_options(options: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return Err(format!("unbalanced double quote in options '{options}'"));
    }
    out.push(current);
    out.retain(|o| !o.is_empty());
    Ok(out)
}

/// The `s3files mount` command line (without the program name) for a helper call, and
/// the warnings for options skipped in sloppy mode.
pub fn translate(call: &HelperCall) -> Result<(Vec<OsString>, Vec<String>), String> {
    let cli = Cli::command();
    let mount = cli
        .find_subcommand("mount")
        .ok_or("the mount command is missing")?;
    let mut argv: Vec<OsString> = vec!["mount".into(), call.source.clone(), call.dir.clone()];
    let mut warnings = Vec::new();
    for option in split_options(&call.options)? {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option.as_str(), None),
        };
        if IGNORED.contains(&key) || key.starts_with("x-") || key.starts_with('_') {
            continue;
        }
        if key == "comment" {
            continue;
        }
        if key == "ro" {
            argv.push("--read-only".into());
            continue;
        }
        let flag = key.replace('_', "-");
        if flag == "foreground" {
            return Err(
                "option 'foreground' is not for mount(8): the helper returns once the mount \
                 is live and the daemon runs in the background (run `s3files mount \
                 --foreground` instead)"
                    .into(),
            );
        }
        let arg = mount.get_arguments().find(|arg| {
            arg.get_long() == Some(flag.as_str())
                || arg
                    .get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&flag.as_str()))
        });
        let arg = arg.filter(|arg| {
            !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
        });
        let Some(arg) = arg else {
            let message = format!(
                "unknown option '{key}' (options are the long flags of `s3files mount`, \
                 e.g. endpoint-url=URL or force-path-style, plus mount(8)'s generic ones; \
                 see `s3files mount --help`)"
            );
            if call.sloppy {
                warnings.push(message);
                continue;
            }
            return Err(message);
        };
        let long = arg.get_long().unwrap_or(flag.as_str());
        match (arg.get_action().takes_values(), value) {
            (true, Some(value)) => {
                argv.push(format!("--{long}").into());
                argv.push(value.into());
            }
            (true, None) => return Err(format!("option '{key}' needs a value: {key}=VALUE")),
            (false, None) => argv.push(format!("--{long}").into()),
            (false, Some(_)) => {
                return Err(format!(
                    "option '{key}' takes no value: write it bare, as '{key}'"
                ))
            }
        }
    }
    Ok((argv, warnings))
}

/// The helper's entry point: parse, translate, check with `s3files mount`'s own parser,
/// then mount in the background.
pub fn main(argv: &[OsString]) -> ExitCode {
    let fail = |message: &str| {
        eprintln!("mount.s3files: error: {message}");
        ExitCode::from(USAGE)
    };
    let call = match parse_call(argv.get(1..).unwrap_or_default()) {
        Ok(call) => call,
        Err(e) => return fail(&e),
    };
    let (args, warnings) = match translate(&call) {
        Ok(translated) => translated,
        Err(e) => return fail(&e),
    };
    for warning in warnings {
        eprintln!("mount.s3files: warning: ignored {warning}");
    }
    let full = std::iter::once(OsString::from("s3files")).chain(args.iter().cloned());
    let mount_args = match Cli::try_parse_from(full) {
        Ok(Cli {
            command: Command::Mount(mount_args),
        }) => mount_args,
        Ok(_) => return fail("options did not make a mount command"),
        Err(e) => {
            // clap's message names the flag (`--write-back-delay`), which is the option.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            return fail(first.trim_start_matches("error: "));
        }
    };
    if call.fake {
        return ExitCode::SUCCESS;
    }
    crate::daemon::mount_command_with(mount_args, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn helper_names_are_recognised_by_argv0() {
        assert!(invoked_as_helper(&os(&["/sbin/mount.s3files", "a", "b"])));
        assert!(invoked_as_helper(&os(&["mount.fuse.s3files"])));
        assert!(!invoked_as_helper(&os(&["/usr/bin/s3files", "mount"])));
        assert!(!invoked_as_helper(&[]));
    }

    #[test]
    fn mount8_call_is_parsed() {
        let call = parse_call(&os(&[
            "s3://b/p",
            "/mnt",
            "-sv",
            "-o",
            "rw,force-path-style",
            "-ocache-size=1GiB",
            "-t",
            "s3files",
        ]))
        .unwrap();
        assert_eq!(call.source, "s3://b/p");
        assert_eq!(call.dir, "/mnt");
        assert_eq!(call.options, "rw,force-path-style,cache-size=1GiB");
        assert!(call.sloppy && !call.fake);
        assert!(parse_call(&os(&["s3://b"]))
            .unwrap_err()
            .contains("SOURCE and DIR"));
        assert!(parse_call(&os(&["a", "b", "-o"]))
            .unwrap_err()
            .contains("-o needs a value"));
        assert!(parse_call(&os(&["a", "b", "-q"]))
            .unwrap_err()
            .contains("-q"));
    }

    #[test]
    fn options_map_one_to_one_onto_flags() {
        let call = parse_call(&os(&[
            "s3://b",
            "/mnt",
            "-o",
            "defaults,_netdev,x-systemd.automount,nofail,noauto,ro,endpoint-url=http://h:9000,\
             force_path_style,write-back-delay=1s,secondary-gids=\"5,6\",\
             import-rule=\"prefix=logs/,size-less-than=1MiB\",comment=x",
        ]))
        .unwrap();
        let (argv, warnings) = translate(&call).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            strings(&argv),
            [
                "mount",
                "s3://b",
                "/mnt",
                "--read-only",
                "--endpoint-url",
                "http://h:9000",
                "--force-path-style",
                "--write-back-delay",
                "1s",
                "--gids",
                "5,6",
                "--import-rule",
                "prefix=logs/,size-less-than=1MiB",
            ]
        );
        // What the helper builds is what `s3files mount` accepts.
        let full = std::iter::once(OsString::from("s3files")).chain(argv);
        let Cli {
            command: Command::Mount(args),
        } = Cli::try_parse_from(full).unwrap()
        else {
            panic!("not a mount command")
        };
        assert!(args.read_only && args.force_path_style);
        assert_eq!(args.gids, [5, 6]);
        assert_eq!(
            args.write_back_delay,
            Some(std::time::Duration::from_secs(1))
        );
    }

    #[test]
    fn bad_options_are_clear_errors() {
        let translate_opts = |options: &str, sloppy: bool| {
            translate(&HelperCall {
                source: "s3://b".into(),
                dir: "/mnt".into(),
                options: options.into(),
                sloppy,
                fake: false,
            })
        };
        let err = translate_opts("no-such-thing=1", false).unwrap_err();
        assert!(err.contains("unknown option 'no-such-thing'"), "{err}");
        let err = translate_opts("endpoint-url", false).unwrap_err();
        assert!(err.contains("needs a value"), "{err}");
        let err = translate_opts("force-path-style=yes", false).unwrap_err();
        assert!(err.contains("takes no value"), "{err}");
        let err = translate_opts("foreground", false).unwrap_err();
        assert!(err.contains("background"), "{err}");
        let err = translate_opts("help", false).unwrap_err();
        assert!(err.contains("unknown option 'help'"), "{err}");
        let err = translate_opts("import-rule=\"prefix=a/", false).unwrap_err();
        assert!(err.contains("unbalanced"), "{err}");
        // Sloppy mode (-s) warns and goes on.
        let (argv, warnings) = translate_opts("no-such-thing,read-only", true).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(strings(&argv)[3..], ["--read-only"]);
    }
}
