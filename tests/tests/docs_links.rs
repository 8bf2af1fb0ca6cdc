//! Every relative Markdown link in the repository resolves: for each tracked `*.md` file
//! (`git ls-files`), every inline link, image and reference definition whose target has no URL
//! scheme must name a file or directory **tracked by git** (so neither something outside the
//! repository nor a local build output counts), and a `#fragment` must match a heading of the
//! target Markdown file (GitHub's anchor rules). Code spans and fenced code blocks are ignored.
//!
//! Needs `git` and a checkout (not a source tarball): it fails loudly without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// The tracked files, as repository-relative paths with `/` separators.
fn tracked_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `git ls-files` in {}: {e}", root.display()));
    assert!(
        out.status.success(),
        "`git ls-files` failed in {} (the link check needs a git checkout): {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .expect("tracked paths are UTF-8")
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!files.is_empty(), "`git ls-files` listed nothing");
    files
}

/// One link found in a Markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    line: usize,
    target: String,
}

/// Removes code spans (any run of backticks up to the next run of the same length).
fn strip_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let mut n = 0;
            while i + n < chars.len() && chars[i + n] == '`' {
                n += 1;
            }
            // Find the closing run of exactly n backticks.
            let mut j = i + n;
            let mut close = None;
            while j < chars.len() {
                if chars[j] == '`' {
                    let mut m = 0;
                    while j + m < chars.len() && chars[j + m] == '`' {
                        m += 1;
                    }
                    if m == n {
                        close = Some(j + m);
                        break;
                    }
                    j += m;
                } else {
                    j += 1;
                }
            }
            match close {
                Some(end) => {
                    out.push(' ');
                    i = end;
                }
                None => {
                    // An unmatched run is literal text.
                    for _ in 0..n {
                        out.push('`');
                    }
                    i += n;
                }
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker {
            let run = trimmed.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => {
                        fence = Some((c, run));
                        continue;
                    }
                    Some((fc, fr)) if fc == c && run >= fr && trimmed[run..].trim().is_empty() => {
                        fence = None;
                        continue;
                    }
                    Some(_) => {}
                }
            }
        }
        if fence.is_none() {
            out.push((i + 1, line));
        }
    }
    out
}

/// Inline links and images `[text](target "title")` and reference definitions `[label]: target`.
fn extract_links(text: &str) -> Vec<Link> {
    let mut links = Vec::new();
    for (line_no, raw) in prose_lines(text) {
        let line = strip_code_spans(raw);
        // Reference definition.
        let t = line.trim_start();
        if line.len() - t.len() <= 3 && t.starts_with('[') {
            let close = t.find(']').unwrap_or(0);
            if close > 1 && t[close + 1..].starts_with(':') {
                let target = t[close + 2..].split_whitespace().next().unwrap_or("");
                let target = target.trim_start_matches('<').trim_end_matches('>');
                if !target.is_empty() {
                    links.push(Link {
                        line: line_no,
                        target: target.to_owned(),
                    });
                }
                continue;
            }
        }
        // Inline links: every "](" opens a destination; parentheses inside it nest.
        let bytes: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i + 1 < bytes.len() {
            if bytes[i] == ']' && bytes[i + 1] == '(' {
                let mut depth = 1;
                let mut j = i + 2;
                let start = j;
                while j < bytes.len() && depth > 0 {
                    match bytes[j] {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let inner: String = bytes[start..j.saturating_sub(1).max(start)]
                    .iter()
                    .collect();
                let inner = inner.trim();
                let target = if let Some(rest) = inner.strip_prefix('<') {
                    rest.split('>').next().unwrap_or("").to_owned()
                } else {
                    inner.split_whitespace().next().unwrap_or("").to_owned()
                };
                if !target.is_empty() {
                    links.push(Link {
                        line: line_no,
                        target,
                    });
                }
                i = j;
            } else {
                i += 1;
            }
        }
    }
    links
}

/// GitHub's anchor of a heading text: lower case, spaces to `-`, everything but letters, digits,
/// `-` and `_` removed.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Anchors of every ATX heading outside code blocks; repeated headings get `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let level = t.chars().take_while(|c| *c == '#').count();
        if level == 0 || level > 6 || !t[level..].starts_with(' ') {
            continue;
        }
        let title = t[level..].trim().trim_end_matches('#').trim();
        let title = strip_code_spans_keep_text(title);
        let base = slug(&title);
        let n = seen.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        out.insert(anchor);
    }
    out
}

/// Heading text with code-span backticks removed but their content kept (as GitHub renders it).
fn strip_code_spans_keep_text(s: &str) -> String {
    s.replace('`', "")
}

fn has_scheme(target: &str) -> bool {
    // `scheme:` before any `/`, `#` or `?` (http:, https:, mailto:, file:, …).
    match target.find(':') {
        Some(colon) => {
            let head = &target[..colon];
            !head.is_empty()
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Normalises `dir/../x` lexically; `None` if it climbs above the repository root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks every link of the given Markdown files against the tracked file list. `read` returns a
/// tracked Markdown file's text (for anchors). Returns one message per broken link.
fn check(
    md_files: &[String],
    tracked: &[String],
    read: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let files: BTreeSet<&str> = tracked.iter().map(String::as_str).collect();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for f in tracked {
        let mut p = Path::new(f).parent();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    let mut anchor_cache: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut errors = Vec::new();
    for md in md_files {
        let Some(text) = read(md) else {
            errors.push(format!("{md}: cannot read the file"));
            continue;
        };
        for link in extract_links(&text) {
            let target = link.target.as_str();
            if has_scheme(target) {
                continue;
            }
            let (path_part, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target, None),
            };
            let path_part = path_part.split('?').next().unwrap_or("");
            let where_ = format!("{md}:{}: link `{target}`", link.line);
            let resolved = if path_part.is_empty() {
                Some(PathBuf::from(md))
            } else {
                let decoded = percent_decode(path_part);
                let base = if decoded.starts_with('/') {
                    PathBuf::new()
                } else {
                    Path::new(md)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .to_path_buf()
                };
                normalize(&base.join(decoded.trim_start_matches('/')))
            };
            let Some(resolved) = resolved else {
                errors.push(format!("{where_} points outside the repository"));
                continue;
            };
            let rel = resolved.to_string_lossy().replace('\\', "/");
            let rel = rel.trim_end_matches('/').to_owned();
            let is_file = files.contains(rel.as_str());
            let is_dir = rel.is_empty() || dirs.contains(&rel);
            if !is_file && !is_dir {
                errors.push(format!(
                    "{where_}: `{rel}` is not a file or directory tracked in the repository"
                ));
                continue;
            }
            if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
                if !is_file || !rel.ends_with(".md") {
                    continue; // Anchors into source files (`#L10`) are not checked.
                }
                let set = anchor_cache
                    .entry(rel.clone())
                    .or_insert_with(|| read(&rel).map(|t| anchors(&t)).unwrap_or_default());
                let fragment = percent_decode(fragment).to_lowercase();
                if !set.contains(&fragment) {
                    errors.push(format!(
                        "{where_}: `{rel}` has no heading with anchor `#{fragment}` (anchors: {})",
                        set.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    errors
}

#[test]
fn every_relative_markdown_link_resolves() {
    let root = repo_root();
    let tracked = tracked_files(&root);
    let md: Vec<String> = tracked
        .iter()
        .filter(|f| f.ends_with(".md"))
        .cloned()
        .collect();
    assert!(
        md.iter().any(|f| f == "README.md") && md.iter().any(|f| f == "docs/README.md"),
        "expected README.md and docs/README.md among the tracked Markdown files: {md:?}"
    );
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    let errors = check(&md, &tracked, &read);
    assert!(
        errors.is_empty(),
        "{} broken relative link(s) in Markdown files:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

// The checker itself, on small fixtures: each rule must catch what it is for.

fn run_fixture(files: &[(&str, &str)]) -> Vec<String> {
    let tracked: Vec<String> = files.iter().map(|(p, _)| (*p).to_owned()).collect();
    let md: Vec<String> = tracked
        .iter()
        .filter(|f| f.ends_with(".md"))
        .cloned()
        .collect();
    let map: HashMap<String, String> = files
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect();
    check(&md, &tracked, &|rel: &str| map.get(rel).cloned())
}

#[test]
fn good_links_pass() {
    let errors = run_fixture(&[
        (
            "README.md",
            "See [docs](docs/a.md), [the index](docs/), [a section](docs/a.md#two-words--and-i1i4),\n\
             [same file](#top), ![img](img/x.png \"title\"), [web](https://example.invalid/x),\n\
             [mail](mailto:a@example.invalid), `[not a link](nowhere.md)`.\n\
             ```\n[in a fence](nowhere.md)\n```\n\
             [ref]: docs/a.md#top-1\n\
             # Top\n",
        ),
        (
            "docs/a.md",
            "# Top\n## Top\n## Two words – and `I1`–I4\n[up](../README.md#top)\n",
        ),
        ("img/x.png", ""),
    ]);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_missing_file_is_reported() {
    let errors = run_fixture(&[("README.md", "[gone](docs/missing.md)\n")]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("README.md:1") && errors[0].contains("docs/missing.md"));
}

#[test]
fn a_link_outside_the_repository_or_untracked_is_reported() {
    let errors = run_fixture(&[(
        "docs/a.md",
        "[outside](../../elsewhere/notes.md) and [build output](../target/x.md)\n",
    )]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("outside the repository"), "{errors:#?}");
    assert!(errors[1].contains("target/x.md"), "{errors:#?}");
}

#[test]
fn a_missing_anchor_is_reported() {
    let errors = run_fixture(&[
        (
            "README.md",
            "[x](docs/a.md#no-such-heading) [y](#nope)\n# Here\n",
        ),
        ("docs/a.md", "# Present\n"),
    ]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("#no-such-heading"), "{errors:#?}");
    assert!(errors[1].contains("#nope"), "{errors:#?}");
}
