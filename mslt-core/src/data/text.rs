//! Reading corpus files: plain text or gzip, documents separated by blank lines, a simple
//! sentence splitter for NSP segments.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Expands inputs (files and directories, recursively) to a sorted list of files. In
/// directories only `*.txt`, `*.txt.gz` and `*.gz` files are taken; files named explicitly are
/// always taken.
pub fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if name.ends_with(".txt") || name.ends_with(".gz") {
                out.push(p);
            }
        }
    }
    Ok(())
}

/// Why a file was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotUtf8,
    Binary,
    Empty,
}

/// Reads a file (gunzipping `.gz`); `Ok(Err(skip))` for files that are not usable text.
pub fn read_text(path: &Path) -> Result<std::result::Result<String, Skip>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut d = flate2::read::GzDecoder::new(&raw[..]);
        let mut v = Vec::new();
        if d.read_to_end(&mut v).is_err() {
            return Ok(Err(Skip::Binary));
        }
        v
    } else {
        raw
    };
    if bytes.contains(&0) {
        return Ok(Err(Skip::Binary));
    }
    match String::from_utf8(bytes) {
        Ok(s) if s.trim().is_empty() => Ok(Err(Skip::Empty)),
        Ok(s) => Ok(Ok(s)),
        Err(_) => Ok(Err(Skip::NotUtf8)),
    }
}

/// Splits a file into documents at blank lines (a file without blank lines is one document),
/// and each document into sentences: at line ends, and after `.`, `!` or `?` (plus closing
/// quotes/brackets) followed by whitespace and an upper-case letter, a digit or an opening quote.
pub fn documents(text: &str) -> Vec<Vec<String>> {
    let mut docs = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !cur.is_empty() {
                docs.push(std::mem::take(&mut cur));
            }
            continue;
        }
        cur.extend(sentences(line));
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// Rule-based sentence splitting of one line.
pub fn sentences(line: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let (_, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len()
                && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '\u{201d}' | '\u{2019}')
            {
                j += 1;
            }
            if j < chars.len() && chars[j].1.is_whitespace() {
                let mut k = j;
                while k < chars.len() && chars[k].1.is_whitespace() {
                    k += 1;
                }
                if k < chars.len() {
                    let n = chars[k].1;
                    if n.is_uppercase() || n.is_ascii_digit() || matches!(n, '"' | '\u{201c}' | '(')
                    {
                        let end = chars[j].0;
                        let s = line[start..end].trim();
                        if !s.is_empty() {
                            out.push(s.to_string());
                        }
                        start = chars[k].0;
                        i = k;
                        continue;
                    }
                }
            }
        }
        i += 1;
    }
    let s = line[start..].trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_sentences() {
        let t = "First one. Second one! Third? yes it is.\nNext line here.\n\n\nDoc two. \"Quoted.\" 3 items.";
        let d = documents(t);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            vec![
                "First one.",
                "Second one!",
                "Third? yes it is.",
                "Next line here."
            ]
        );
        assert_eq!(d[1], vec!["Doc two.", "\"Quoted.\"", "3 items."]);
    }

    #[test]
    fn abbreviation_before_lowercase_does_not_split() {
        assert_eq!(
            sentences("See e.g. the report. Then go."),
            vec!["See e.g. the report.", "Then go."]
        );
    }
}
