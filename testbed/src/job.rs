//! The job script L1's init runs in the host-root chroot: same environment, same working directory,
//! same argv; stdin empty, stdout and stderr into the run dir (which the host tails while it runs).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where L1's init mounts the run dir inside the chroot.
pub const RUN_DIR_IN_L1: &str = "/run/testbed";

/// Quotes `s` for POSIX sh: single quotes, with `'` written as `'\''`.
pub fn sh_quote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

fn is_shell_name(k: &[u8]) -> bool {
    !k.is_empty()
        && !k[0].is_ascii_digit()
        && k.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Variables that describe the host shell session, not the command's environment.
const SKIP_ENV: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// Renders the job script.
pub fn render(cwd: &Path, env: &[(OsString, OsString)], argv: &[OsString]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"# written by testbed: runs in L1 exactly what the host asked for\n");
    s.extend_from_slice(
        format!("exec </dev/null >{RUN_DIR_IN_L1}/stdout 2>{RUN_DIR_IN_L1}/stderr\n").as_bytes(),
    );
    for (k, v) in env {
        let k = k.as_bytes();
        if !is_shell_name(k) || SKIP_ENV.iter().any(|s| s.as_bytes() == k) {
            continue;
        }
        s.extend_from_slice(b"export ");
        s.extend_from_slice(k);
        s.push(b'=');
        s.extend_from_slice(&sh_quote(v.as_bytes()));
        s.push(b'\n');
    }
    let q = sh_quote(cwd.as_os_str().as_bytes());
    s.extend_from_slice(b"cd ");
    s.extend_from_slice(&q);
    s.extend_from_slice(b" || { echo \"testbed: working directory \"");
    s.extend_from_slice(&q);
    s.extend_from_slice(b"\" is not there in L1\" >&2; exit 125; }\n");
    s.extend_from_slice(b"exec");
    for a in argv {
        s.push(b' ');
        s.extend_from_slice(&sh_quote(a.as_bytes()));
    }
    s.push(b'\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn quoting_survives_a_real_shell() {
        let nasty = "a'b \"c\" $HOME `x` \\ \n end";
        let q = String::from_utf8(sh_quote(nasty.as_bytes())).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {q}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn script_sets_env_cwd_and_argv() {
        let env = vec![
            (OsString::from("FOO"), OsString::from("it's")),
            (OsString::from("BAD-NAME"), OsString::from("x")),
            (OsString::from("PWD"), OsString::from("/elsewhere")),
        ];
        let argv = vec![OsString::from("echo"), OsString::from("a b")];
        let s = String::from_utf8(render(Path::new("/tmp"), &env, &argv)).unwrap();
        assert!(s.contains("export FOO='it'\\''s'\n"));
        assert!(!s.contains("BAD-NAME"));
        assert!(!s.contains("/elsewhere"));
        assert!(s.contains("cd '/tmp' ||"));
        assert!(s.ends_with("exec 'echo' 'a b'\n"));
    }
}
