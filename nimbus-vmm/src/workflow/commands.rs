//! Environment files (`GITHUB_ENV`, `GITHUB_OUTPUT`, `GITHUB_STATE`, `GITHUB_PATH`)
//! and workflow commands (`::add-mask::`, `::group::`, `::error …::`, …) as
//! GitHub's runner reads them. Pure functions: the guest calls them on its
//! steps' files and output.

use super::job::Annotation;

/// Most bytes of one environment file the runner reads (GitHub caps outputs at 1 MiB
/// per job; env files are bounded so a step cannot exhaust the guest agent).
pub const MAX_ENV_FILE_BYTES: u64 = 16 << 20;

/// `NAME=value` lines and `NAME<<DELIMITER` … `DELIMITER` blocks, in order.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut number = 0;
    while let Some(line) = lines.next() {
        number += 1;
        if line.is_empty() {
            continue;
        }
        let equals = line.find('=');
        let heredoc = line.find("<<");
        match (equals, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                let name = &line[..e];
                check_name(name, number)?;
                pairs.push((name.to_string(), line[e + 1..].to_string()));
            }
            (_, Some(h)) => {
                let name = &line[..h];
                let delimiter = &line[h + 2..];
                check_name(name, number)?;
                if delimiter.is_empty() {
                    return Err(format!("line {number}: empty delimiter after '<<'"));
                }
                let mut value: Vec<&str> = Vec::new();
                let mut closed = false;
                for line in lines.by_ref() {
                    number += 1;
                    if line == delimiter {
                        closed = true;
                        break;
                    }
                    value.push(line);
                }
                if !closed {
                    return Err(format!(
                        "matching delimiter not found '{delimiter}' for {name}"
                    ));
                }
                pairs.push((name.to_string(), value.join("\n")));
            }
            _ => return Err(format!("line {number}: invalid format {line:?}")),
        }
    }
    Ok(pairs)
}

fn check_name(name: &str, line: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("line {line}: a name is required"));
    }
    if name.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(format!("line {line}: invalid name {name:?}"));
    }
    Ok(())
}

/// The directories `GITHUB_PATH` adds, one per non-empty line.
pub fn parse_path_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A workflow command found in a line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `::add-mask::VALUE`.
    AddMask(String),
    /// `::set-output name=N::VALUE` (deprecated, still honoured).
    SetOutput(String, String),
    /// `::save-state name=N::VALUE` (deprecated, still honoured).
    SaveState(String, String),
    /// `::group::TITLE`.
    Group(String),
    /// `::endgroup::`.
    EndGroup,
    /// `::debug::MESSAGE`.
    Debug(String),
    /// `::error …::`, `::warning …::`, `::notice …::`.
    Annotate(Annotation),
    /// `::stop-commands::TOKEN`: commands are ignored until `::TOKEN::`.
    StopCommands(String),
    /// `::echo::on|off`.
    Echo(bool),
    /// `::set-env` / `::add-path`: disabled on GitHub since 2020.
    Disabled(String),
}

/// A command's name, its `key=value` properties and its data.
pub type ParsedCommand = (String, Vec<(String, String)>, String);

/// Parses `::name props::data` (leading whitespace allowed, as the runner does).
pub fn parse_command(line: &str) -> Option<ParsedCommand> {
    let rest = line.trim_start().strip_prefix("::")?;
    let end = rest.find("::")?;
    let head = &rest[..end];
    let data = unescape_data(&rest[end + 2..]);
    let (name, props) = match head.split_once(' ') {
        Some((name, props)) => (name, props),
        None => (head, ""),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    let props = props
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), unescape_property(v)))
        .collect();
    Some((name.to_string(), props, data))
}

/// The command in `line`, if it is one the runner knows.
pub fn command(line: &str) -> Option<Command> {
    let (name, props, data) = parse_command(line)?;
    let prop = |key: &str| {
        props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    Some(match name.as_str() {
        "add-mask" => Command::AddMask(data),
        "set-output" => Command::SetOutput(prop("name")?, data),
        "save-state" => Command::SaveState(prop("name")?, data),
        "group" => Command::Group(data),
        "endgroup" => Command::EndGroup,
        "debug" => Command::Debug(data),
        "error" | "warning" | "notice" => Command::Annotate(Annotation {
            level: name.clone(),
            message: data,
            file: prop("file"),
            line: prop("line").and_then(|l| l.parse().ok()),
            column: prop("col").and_then(|c| c.parse().ok()),
            title: prop("title"),
        }),
        "stop-commands" => Command::StopCommands(data),
        "echo" => Command::Echo(data.trim().eq_ignore_ascii_case("on")),
        "set-env" | "add-path" => Command::Disabled(name),
        _ => return None,
    })
}

fn unescape_data(text: &str) -> String {
    text.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%25", "%")
}

fn unescape_property(text: &str) -> String {
    text.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
}

/// Secret values and `::add-mask::` values, replaced by `***` in every line.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a mask that contains another is replaced whole.
    values: Vec<String>,
}

/// Most masks one job may register (each costs a scan of every line).
pub const MAX_MASKS: usize = 1024;

impl Masker {
    /// Adds a value to mask; each line of a multi-line value is masked too.
    pub fn add(&mut self, value: &str) {
        let mut candidates = vec![value.trim_end_matches(['\r', '\n']).to_string()];
        if value.contains('\n') {
            candidates.extend(
                value
                    .lines()
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .filter(|l| !l.trim().is_empty()),
            );
        }
        for candidate in candidates {
            if candidate.trim().is_empty()
                || self.values.contains(&candidate)
                || self.values.len() >= MAX_MASKS
            {
                continue;
            }
            self.values.push(candidate);
        }
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// `line` with every registered value replaced by `***`.
    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_hold_pairs_and_heredocs() {
        let text = "A=1\nB=x=y\nMULTI<<EOF\nline one\n\nline=three\nEOF\nC<<=\nD\n=\n\n";
        let pairs = parse_env_file(text).expect("parses");
        assert_eq!(
            pairs,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("MULTI".into(), "line one\n\nline=three".into()),
                ("C".into(), "D".into()),
            ]
        );
        assert!(parse_env_file("X<<END\nno end\n")
            .expect_err("bad")
            .contains("matching delimiter not found 'END'"));
        assert!(parse_env_file("=value").is_err());
        assert!(parse_env_file("just text").is_err());
        assert_eq!(parse_path_file("/a\n\n /b \n"), ["/a", "/b"]);
    }

    #[test]
    fn commands_parse_like_the_runner() {
        assert_eq!(
            command("::set-output name=ver::1.2"),
            Some(Command::SetOutput("ver".into(), "1.2".into()))
        );
        assert_eq!(
            command("  ::add-mask::s3cr%25t"),
            Some(Command::AddMask("s3cr%t".into()))
        );
        assert_eq!(
            command("::error file=src/a.rs,line=3,col=7,title=Bad%2C bad::it%0Abroke"),
            Some(Command::Annotate(Annotation {
                level: "error".into(),
                message: "it\nbroke".into(),
                file: Some("src/a.rs".into()),
                line: Some(3),
                column: Some(7),
                title: Some("Bad, bad".into()),
            }))
        );
        assert_eq!(
            command("::group::Build"),
            Some(Command::Group("Build".into()))
        );
        assert_eq!(command("::endgroup::"), Some(Command::EndGroup));
        assert_eq!(
            command("::set-env name=A::b"),
            Some(Command::Disabled("set-env".into()))
        );
        assert_eq!(command("::unknown::x"), None);
        assert_eq!(command("echo ::add-mask::x"), None);
        assert_eq!(command(":: not one"), None);
    }

    #[test]
    fn masks_replace_longest_first_and_each_line_of_multi_line_values() {
        let mut masker = Masker::default();
        masker.add("abc");
        masker.add("abcdef");
        masker.add("first\nsecond");
        masker.add("   ");
        assert_eq!(masker.mask("x abcdef abc y"), "x *** *** y");
        assert_eq!(masker.mask("second"), "***");
        assert_eq!(masker.mask("nothing"), "nothing");
    }
}
