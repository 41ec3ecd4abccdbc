//! Where each field of a checked configuration sits in its file, so that problems found after
//! parsing (a plugin that does not load, a key that does not parse, an address already in use)
//! are reported the way parse problems are: `<file>:<line>:<column>: <field>: <message>`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::{ConfigError, ConfigProblem, line_column};

/// The file a [`Config`](super::Config) came from, and how to find a field in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    file: PathBuf,
    text: Arc<str>,
    /// Each plugin's index in the file's `[[plugins]]`, by instance name.
    plugin_indexes: HashMap<String, usize>,
}

impl Origins {
    pub(super) fn new(file: &Path, text: &str, plugin_indexes: HashMap<String, usize>) -> Self {
        Origins {
            file: file.to_path_buf(),
            text: text.into(),
            plugin_indexes,
        }
    }

    /// The config file, as given.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The SHA-256 of the file's text, in hex: which version of the config is running.
    pub fn text_hash(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The field of the plugin instance named `name`, e.g. `plugins[2]` (by its place in the
    /// file, not in run order).
    pub fn plugin_field(&self, name: &str) -> String {
        match self.plugin_indexes.get(name) {
            Some(index) => format!("plugins[{index}]"),
            None => "plugins".to_owned(),
        }
    }

    /// A problem on `field` (e.g. `listeners[0].certificates[1].key`), placed at the field's
    /// value in the file; a field the file does not spell out (a default) is placed at the
    /// nearest enclosing one.
    pub fn problem(&self, field: impl Into<String>, message: impl fmt::Display) -> ConfigProblem {
        let field = field.into();
        let offset = DeTable::parse(&self.text)
            .ok()
            .and_then(|root| offset_of(&DeValue::Table(root.into_inner()), &field))
            .unwrap_or(0);
        let (line, column) = line_column(&self.text, offset);
        ConfigProblem {
            line,
            column,
            field,
            message: message.to_string().replace('\n', "; "),
        }
    }

    /// The error listing `problems`, in file order.
    pub fn error(&self, mut problems: Vec<ConfigProblem>) -> ConfigError {
        problems.sort_by_key(|p| (p.line, p.column));
        ConfigError::Invalid {
            path: self.file.clone(),
            problems,
        }
    }
}

/// Byte offset of the deepest value on `field`'s path.
fn offset_of(root: &DeValue<'_>, field: &str) -> Option<usize> {
    let mut current = root;
    let mut offset = None;
    for step in steps(field) {
        let next = match (current, step) {
            (DeValue::Table(table), Step::Key(key)) => table.get(key),
            (DeValue::Array(items), Step::Index(index)) => items.get(index),
            _ => None,
        };
        let Some(next) = next else { break };
        offset = Some(next.span().start);
        current = next.get_ref();
    }
    offset
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[1][2].c` as keys and indexes.
fn steps(field: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = part
            .split_once('[')
            .map_or((part, ""), |(key, _)| (key, &part[key.len()..]));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, after)) = inner.split_once(']') else {
                break;
            };
            match index.parse() {
                Ok(index) => out.push(Step::Index(index)),
                Err(_) => break,
            }
            rest = after;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
[access_log]
target = \"access.log\"

[[listeners]]
address = \"127.0.0.1:0\"

[[listeners.certificates]]
cert = \"a.pem\"
key = \"a.key\"

[[plugins]]
path = \"p.wasm\"
";

    fn origins() -> Origins {
        Origins::new(
            Path::new("tollgate.toml"),
            TEXT,
            HashMap::from([("p".to_owned(), 0)]),
        )
    }

    #[test]
    fn fields_split_into_keys_and_indexes() {
        assert_eq!(
            steps("listeners[0].certificates[12].key"),
            [
                Step::Key("listeners"),
                Step::Index(0),
                Step::Key("certificates"),
                Step::Index(12),
                Step::Key("key")
            ]
        );
        assert_eq!(steps("access_log.target").len(), 2);
    }

    #[test]
    fn problems_point_at_the_field_value() {
        let origins = origins();
        let key = origins.problem("listeners[0].certificates[0].key", "bad key");
        assert_eq!((key.line, key.column), (9, 7));
        let target = origins.problem("access_log.target", "cannot open");
        assert_eq!((target.line, target.column), (2, 10));
        let path = origins.problem(format!("{}.path", origins.plugin_field("p")), "x");
        assert_eq!(
            (path.line, path.column, path.field.as_str()),
            (12, 8, "plugins[0].path")
        );
    }

    #[test]
    fn a_defaulted_field_points_at_its_table() {
        let problem = origins().problem("listeners[0].client_ca", "x\ny");
        assert_eq!(problem.line, 4);
        assert_eq!(problem.message, "x; y");
        let unknown = origins().problem("services[3].ca", "x");
        assert_eq!((unknown.line, unknown.column), (1, 1));
    }
}
