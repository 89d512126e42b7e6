//! Every command shown in README.md and docs/*.md is one that works.
//!
//! The pages are read as Markdown: shell code blocks (`sh`, `console`, ...) and inline code
//! spans. In them:
//! - every `concordant ...`, `./target/release/concordant ...` and `cargo run -- ...`
//!   command is given to the real program with `--help` after its arguments: clap parses
//!   the subcommand, every flag and every value up to it, then prints the subcommand's help
//!   (a misspelt subcommand or flag, or a value that does not parse, fails). Inline spans
//!   are often synopses: `[--x]` and `...` are dropped, `(a | b)` and `mesh|ring` take their
//!   first choice, and placeholders (`FILE`, `ID`, `N`, `<id>`, ...) become sample values.
//! - every such command of a code block (whole commands, not synopses) other than `bench`
//!   and `demo` (which run for minutes or seconds) is also run as written in an empty
//!   temporary directory, any `--url` pointing nowhere: with no cluster to reach it fails
//!   (it never talks to a node another program runs on this machine), but never with
//!   clap's usage error (exit status 2), so required arguments, conflicts and positionals
//!   are checked too.
//! - `cargo run --example X`, `cargo test --test X`, `cargo bench --bench X`,
//!   `cargo fuzz run X`, `python3 scripts/...` and `npm --prefix DIR` name files that
//!   exist, and the `CONCORDANT_*` variables set before a command are read somewhere.
//! - every `curl` example runs, in order, against one in-process node with its HTTP API
//!   (its `-o` files feed later `--data-binary @file`); every `METHOD /path` named in an
//!   inline span (the endpoint tables) and every `http(s)://` or `ws(s)://` URL to a
//!   `/v1/...` path is sent to the same node: the router must know the path and the method
//!   (no `no endpoint` 404, no 405), and a `curl` example must succeed (unless it sends a
//!   file no earlier example wrote). Only paths of the API count (`/v1/...`, `/metrics`,
//!   `/`): a `curl` of another program (a load balancer's statistics, say) is not checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concordant::api::{self, ApiOptions};
use concordant::certs::in_memory_identities;
use concordant::client::Client;
use concordant::config::TopologyKind;
use concordant::topology::Topology;
use concordant::NodeBuilder;
use hyper::Method;

const BIN: &str = env!("CARGO_BIN_EXE_concordant");
/// Bound on one run of the program.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// What a `{id}` in an endpoint becomes: a document (or node) that does not exist.
const SAMPLE_ID: &str = "docs-check";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, with their text.
fn pages() -> Vec<(String, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root()).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Where something was shown: the page and line.
#[derive(Clone, Debug)]
struct Place {
    page: String,
    line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.page, self.line)
    }
}

/// A fenced code block: its language and its lines (with their line numbers).
struct Block {
    lang: String,
    lines: Vec<(usize, String)>,
}

/// A page cut into its fenced code blocks and the rest (prose with the blocks blanked, so
/// that line numbers stay).
fn split_page(text: &str) -> (Vec<Block>, String) {
    let mut blocks = Vec::new();
    let mut prose = String::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                let lang = line.trim_start().trim_start_matches('`').trim();
                open = Some(Block {
                    lang: lang.split([',', ' ']).next().unwrap_or("").to_string(),
                    lines: Vec::new(),
                });
            }
            (Some(_), true) => blocks.push(open.take().unwrap()),
            (Some(block), false) => block.lines.push((i + 1, line.to_string())),
            (None, false) => prose.push_str(line),
        }
        prose.push('\n');
    }
    (blocks, prose)
}

/// A page with the lines of its shell code blocks blanked.
fn without_shell_blocks(text: &str) -> String {
    let mut out = String::new();
    let mut shell: Option<bool> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (shell, fence) {
            (None, Some(lang)) => {
                shell = Some(is_shell(lang.trim().split([',', ' ']).next().unwrap_or("")));
            }
            (Some(_), Some(_)) => shell = None,
            (Some(true), None) => {}
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "" | "sh" | "bash" | "shell" | "console")
}

/// Inline code spans of prose (they may run over a line end, not over a blank line), with
/// the line each starts on.
fn inline_spans(prose: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut rest = prose;
    let mut line = 1;
    while let Some(start) = rest.find('`') {
        line += rest[..start].matches('\n').count();
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        let span = &after[..end];
        if span.contains("\n\n") {
            // Not a span: an unpaired backtick. Go on after it.
            rest = after;
            continue;
        }
        spans.push((line, span.replace('\n', " ")));
        line += span.matches('\n').count();
        rest = &after[end + 1..];
    }
    spans
}

/// The shell's words and operators (`|`, `&&`, `;`, ...) of one logical line; a `#` that
/// starts a word starts a comment.
fn lex(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                w.push(n);
                            }
                        }
                        _ => w.push(q),
                    }
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    word.get_or_insert_with(String::new).push(n);
                }
            }
            '#' if word.is_none() => break,
            '|' | '&' | ';' => {
                words.extend(word.take());
                let mut op = c.to_string();
                if chars.peek() == Some(&c) {
                    op.push(chars.next().unwrap());
                }
                words.push(op);
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

fn is_operator(word: &str) -> bool {
    matches!(word, "|" | "||" | "&" | "&&" | ";" | ";;")
}

/// Whether a line leaves a quote open (it goes on on the next line).
fn quote_open(line: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut at_word_start = true;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '\\' => {
                    chars.next();
                }
                '#' if at_word_start => return false,
                _ => {}
            },
        }
        at_word_start = quote.is_none() && c.is_whitespace();
    }
    quote.is_some()
}

/// The commands of a shell block: lines joined over `\` line ends and open quotes; in a
/// block with `$ ` prompts only the prompted lines (the rest is output).
fn block_commands(block: &Block) -> Vec<(usize, String)> {
    let prompted = block
        .lines
        .iter()
        .any(|(_, l)| l.trim_start().starts_with("$ "));
    let mut commands = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in &block.lines {
        let line = match &current {
            Some(_) => line.as_str(),
            None if prompted => match line.trim_start().strip_prefix("$ ") {
                Some(rest) => rest,
                None => continue,
            },
            None => line.as_str(),
        };
        let (start, mut text) = current.take().unwrap_or((*n, String::new()));
        if let Some(cut) = line.strip_suffix('\\') {
            text.push_str(cut);
            current = Some((start, text));
            continue;
        }
        text.push_str(line);
        if quote_open(&text) {
            text.push('\n');
            current = Some((start, text));
            continue;
        }
        commands.push((start, text));
    }
    commands.extend(current);
    commands
}

/// A synopsis made into a command: optional brackets and repeats dropped, the first of
/// alternatives taken.
fn from_synopsis(span: &str) -> String {
    let mut s = span.to_string();
    // (a | b) → a
    while let Some(open) = s.find('(') {
        let Some(close) = s[open..].find(')').map(|c| open + c) else {
            break;
        };
        let first = s[open + 1..close]
            .split('|')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        s.replace_range(open..=close, &first);
    }
    let s = s
        .replace(['[', ']'], " ")
        .replace("...", " ")
        .replace('…', " ");
    s.split_whitespace()
        .map(|w| w.split('|').next().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sample value for a placeholder (`FILE`, `<id>`, ...), or the word itself.
fn sample(word: &str) -> String {
    let inner = word
        .strip_prefix('<')
        .and_then(|w| w.strip_suffix('>'))
        .unwrap_or(word);
    let value = match inner {
        "N" | "K" => "3",
        "R" => "2",
        "P" => "7100",
        "S" | "SECS" => "10",
        "D" | "J" => "50",
        "DURATION" => "1h",
        "ID" | "id" | "NODE" => "n1",
        "F" | "FILE" | "file" => "cluster.toml",
        "DIR" => "dir",
        "USER" | "user" => "alice",
        "ADDR" => "127.0.0.1:7199",
        "URL" | "url" => "http://127.0.0.1:9",
        _ if inner != word => "x",
        _ => word,
    };
    value.to_string()
}

/// A command found in a page.
#[derive(Debug)]
struct Shown {
    place: Place,
    /// The words (operators included).
    words: Vec<String>,
    /// A whole command from a code block (else a span, perhaps a synopsis or a fragment).
    whole: bool,
}

/// The simple commands of a line: split at operators, leading `NAME=value` kept apart.
fn simple_commands(words: &[String]) -> Vec<(Vec<String>, Vec<String>)> {
    words
        .split(|w| is_operator(w))
        .filter(|c| !c.is_empty())
        .map(|c| {
            let env = c.iter().take_while(|w| is_assignment(w)).count();
            (c[..env].to_vec(), c[env..].to_vec())
        })
        .collect()
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// Every command of every page, from code blocks and from inline spans.
fn shown_commands() -> Vec<Shown> {
    let mut shown = Vec::new();
    for (page, text) in pages() {
        let (blocks, prose) = split_page(&text);
        for block in blocks.iter().filter(|b| is_shell(&b.lang)) {
            for (line, command) in block_commands(block) {
                shown.push(Shown {
                    place: Place {
                        page: page.clone(),
                        line,
                    },
                    words: lex(&command),
                    whole: true,
                });
            }
        }
        for (line, span) in inline_spans(&prose) {
            let span = span.trim();
            let command = if let Some(rest) = span.strip_prefix("bench ") {
                format!("concordant bench {rest}")
            } else if let Some(rest) = span.strip_prefix("concordant ") {
                if !rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '-') {
                    continue;
                }
                span.to_string()
            } else if span.starts_with("./target/release/concordant ") || span.starts_with("cargo ")
            {
                span.to_string()
            } else {
                continue;
            };
            shown.push(Shown {
                place: Place {
                    page: page.clone(),
                    line,
                },
                words: lex(&from_synopsis(&command)),
                whole: false,
            });
        }
    }
    shown
}

/// The program's arguments if a command runs `concordant`.
fn concordant_args(words: &[String]) -> Option<Vec<String>> {
    let program = words.first()?;
    if program == "concordant" || program.ends_with("/concordant") {
        return Some(words[1..].to_vec());
    }
    if program == "cargo" && words.get(1).map(String::as_str) == Some("run") {
        let dash = words.iter().position(|w| w == "--");
        let other_bin = flag_value(words, "--bin").is_some_and(|b| b != "concordant");
        if flag_value(words, "--example").is_some() || other_bin {
            return None;
        }
        return Some(dash.map(|d| words[d + 1..].to_vec()).unwrap_or_default());
    }
    None
}

/// What is wrong with one run of the program, if anything.
fn run_program(args: &[String], dir: &Path) -> Result<(Option<i32>, String, String), String> {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let start = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {RUN_LIMIT:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks one `concordant` command: its arguments parse, and (whole commands) it runs
/// without a usage error.
fn check_concordant(shown: &Shown, args: &[String], failures: &mut Vec<String>) {
    let args: Vec<String> = args.iter().map(|a| sample(a)).collect();
    let said = format!("{}: concordant {}", shown.place, args.join(" "));
    eprintln!("{said}");
    let Some(subcommand) = args.first() else {
        failures.push(format!("{said}: no subcommand"));
        return;
    };
    if subcommand == "--version" {
        match run_program(&args, &root()) {
            Ok((Some(0), out, _)) if out.starts_with("concordant ") => {}
            other => failures.push(format!("{said}: {other:?}")),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut with_help = args.clone();
    with_help.push("--help".into());
    match run_program(&with_help, dir.path()) {
        Ok((Some(0), out, _)) if out.contains(&format!("Usage: concordant {subcommand}")) => {}
        Ok((code, out, err)) => {
            let shown = if err.is_empty() { out } else { err };
            failures.push(format!(
                "{said}: does not parse (exit {code:?}): {}",
                shown.trim()
            ));
            return;
        }
        Err(e) => {
            failures.push(format!("{said}: {e}"));
            return;
        }
    }
    if !shown.whole || matches!(subcommand.as_str(), "bench" | "demo") {
        return;
    }
    // As written, where there is no cluster (and with any --url pointing nowhere, so that
    // a node of another cluster on this machine is never asked): any failure but clap's
    // usage error.
    let mut args = args;
    for i in 1..args.len() {
        if args[i - 1] == "--url" {
            args[i] = "http://127.0.0.1:9".into();
        }
    }
    match run_program(&args, dir.path()) {
        Ok((Some(2), _, err)) => failures.push(format!("{said}: usage error: {}", err.trim())),
        Ok(_) => {}
        Err(e) => failures.push(format!("{said}: {e}")),
    }
}

/// The value of `flag` in a command (`--flag V` or `--flag=V`).
fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words.iter().enumerate().find_map(|(i, w)| {
        if w == flag {
            words.get(i + 1).map(String::as_str)
        } else {
            w.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// Checks that the files a `cargo`, `python3` or `npm` command names exist.
fn check_files(shown: &Shown, words: &[String], failures: &mut Vec<String>) {
    let mut must_exist = Vec::new();
    match words.first().map(String::as_str) {
        Some("cargo") => {
            if let Some(example) = flag_value(words, "--example") {
                must_exist.push(format!("examples/{example}.rs"));
            }
            if let Some(test) = flag_value(words, "--test") {
                must_exist.push(format!("tests/{test}.rs"));
            }
            if let Some(bench) = flag_value(words, "--bench").filter(|b| *b != "NAME") {
                must_exist.push(format!("benches/{bench}.rs"));
            }
            if let Some(i) = words.iter().position(|w| w == "fuzz") {
                if words.get(i + 1).map(String::as_str) == Some("run") {
                    if let Some(target) = words.get(i + 2) {
                        must_exist.push(format!("fuzz/fuzz_targets/{target}.rs"));
                    }
                }
            }
        }
        Some("python3") | Some("python") => {
            if let Some(script) = words.get(1) {
                must_exist.push(script.clone());
            }
        }
        Some("npm") => {
            if let Some(prefix) = flag_value(words, "--prefix") {
                must_exist.push(format!("{prefix}/package.json"));
            }
        }
        _ => {}
    }
    for path in must_exist {
        if !root().join(&path).exists() {
            failures.push(format!("{}: {path} does not exist", shown.place));
        }
    }
}

/// Every Rust source file under `dir`.
fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_command_in_the_docs_parses_and_runs() {
    let shown = shown_commands();
    let mut code = String::new();
    sources(&root().join("src"), &mut code);
    sources(&root().join("tests"), &mut code);
    // The variables HAProxy reads from the configuration the docs ship ("${NAME-default}").
    let haproxy = std::fs::read_to_string(root().join("docs/haproxy.cfg")).unwrap();
    for var in haproxy
        .split("${")
        .skip(1)
        .filter_map(|r| r.split(['-', '}']).next())
    {
        code.push_str(&format!("\"{var}\"\n"));
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for command in &shown {
        for (env, words) in simple_commands(&command.words) {
            for var in env.iter().filter_map(|a| a.split_once('=').map(|(n, _)| n)) {
                if var.starts_with("CONCORDANT_") && !code.contains(&format!("\"{var}\"")) {
                    failures.push(format!("{}: {var} is read nowhere", command.place));
                }
            }
            check_files(command, &words, &mut failures);
            if let Some(args) = concordant_args(&words) {
                if args.is_empty() {
                    continue;
                }
                check_concordant(command, &args, &mut failures);
                checked += 1;
            }
        }
    }
    eprintln!("({} commands found)", shown.len());
    report("concordant commands", checked, 20, &failures);
}

/// Says how many were checked; fails with every failure, or if fewer than `least` were
/// found (the extraction itself broke).
fn report(what: &str, checked: usize, least: usize, failures: &[String]) {
    eprintln!("{checked} {what} checked");
    assert!(checked >= least, "too few {what} found: {checked}");
    assert!(
        failures.is_empty(),
        "shown in the docs and not working ({what} checked):\n{}",
        failures.join("\n")
    );
}

/// An HTTP request the docs show.
#[derive(Debug)]
struct ShownRequest {
    place: Place,
    method: Method,
    path: String,
    /// The body as shown.
    body: Option<Vec<u8>>,
    /// The body is a file (`--data-binary @FILE`), known if an earlier example wrote it.
    body_file: Option<String>,
    /// Where the answer goes (`curl -o FILE`).
    output: Option<String>,
    /// A `curl` example, which must succeed when its body is known; else the request need
    /// only reach an endpoint.
    example: bool,
}

/// The path (and query) of a URL, and its host.
fn url_parts(url: &str) -> Option<(&str, &str)> {
    let rest = url.split_once("://")?.1;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Whether a path is one of the HTTP API's (not another program's).
fn is_api_path(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/v1" || path == "/metrics" || path == "/"
}

/// The request of a `curl` command.
fn curl_request(place: &Place, words: &[String]) -> Option<ShownRequest> {
    let mut method = None;
    let mut data = None;
    let mut output = None;
    let mut url = None;
    let mut rest = words[1..].iter();
    while let Some(w) = rest.next() {
        match w.as_str() {
            "-X" | "--request" => method = rest.next().cloned(),
            "-H" | "--header" => {
                rest.next();
            }
            "-d" | "--data" | "--data-raw" | "--data-binary" => data = rest.next().cloned(),
            "-o" | "--output" => output = rest.next().cloned(),
            w if w.starts_with("http://") || w.starts_with("https://") => url = Some(w),
            _ => {}
        }
    }
    let (_, path) = url_parts(url?)?;
    if !is_api_path(path.split('?').next().unwrap_or(path)) {
        return None;
    }
    let method = match (method, &data) {
        (Some(m), _) => Method::from_bytes(m.as_bytes()).ok()?,
        (None, Some(_)) => Method::POST,
        (None, None) => Method::GET,
    };
    let (body, body_file) = match data {
        Some(d) => match d.strip_prefix('@') {
            Some(file) => (None, Some(file.to_string())),
            None => (Some(d.into_bytes()), None),
        },
        None => (None, None),
    };
    Some(ShownRequest {
        place: place.clone(),
        method,
        path: path.to_string(),
        body,
        body_file,
        output,
        example: true,
    })
}

/// `GET /v1/docs/{id}`, `GET/POST /v1/docs`, ... in an inline span.
fn endpoint_requests(place: &Place, span: &str) -> Vec<ShownRequest> {
    let Some((methods, path)) = span.trim().split_once(' ') else {
        return Vec::new();
    };
    let methods: Vec<&str> = methods.split('/').collect();
    let known = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    if !methods.iter().all(|m| known.contains(m)) || !path.starts_with('/') {
        return Vec::new();
    }
    let path = path.split(['?', ' ']).next().unwrap_or(path);
    let path: Vec<&str> = path
        .split('/')
        .map(|segment| {
            let placeholder = (segment.starts_with('{') && segment.ends_with('}'))
                || (segment.starts_with('<') && segment.ends_with('>'));
            if placeholder {
                SAMPLE_ID
            } else {
                segment
            }
        })
        .collect();
    let path = path.join("/");
    methods
        .iter()
        .map(|m| ShownRequest {
            place: place.clone(),
            method: Method::from_bytes(m.as_bytes()).unwrap(),
            path: path.clone(),
            body: None,
            body_file: None,
            output: None,
            example: false,
        })
        .collect()
}

/// GET requests for the URLs of a text that go to a node's API: a `/v1/...` or
/// `/metrics` path anywhere, or `/` on the loopback address.
fn url_requests(place: &Place, text: &str) -> Vec<ShownRequest> {
    let mut requests = Vec::new();
    for (at, _) in text.match_indices("://") {
        let scheme_start = text[..at]
            .rfind(|c: char| !c.is_ascii_alphabetic())
            .map_or(0, |i| i + 1);
        if !matches!(&text[scheme_start..at], "http" | "https" | "ws" | "wss") {
            continue;
        }
        let end = text[at..]
            .find(|c: char| c.is_whitespace() || "'\"`<>)]".contains(c))
            .map_or(text.len(), |i| at + i);
        let Some((host, path)) = url_parts(&text[scheme_start..end]) else {
            continue;
        };
        let path = path.split(['?', '#', '$']).next().unwrap_or("/");
        let local = host.starts_with("127.0.0.1") || host.starts_with("localhost");
        if is_api_path(path) && (path != "/" || local) {
            let line = place.line + text[..at].matches('\n').count();
            requests.push(ShownRequest {
                place: Place {
                    page: place.page.clone(),
                    line,
                },
                method: Method::GET,
                path: path.to_string(),
                body: None,
                body_file: None,
                output: None,
                example: false,
            });
        }
    }
    requests
}

/// Every request the pages show: the `curl` examples in order, then the endpoints named
/// and the URLs.
fn shown_requests() -> Vec<ShownRequest> {
    let mut examples = Vec::new();
    let mut named = Vec::new();
    for command in shown_commands().iter().filter(|c| c.whole) {
        for (_, words) in simple_commands(&command.words) {
            if words.first().map(String::as_str) == Some("curl") {
                examples.extend(curl_request(&command.place, &words));
            }
        }
    }
    for (page, text) in pages() {
        let (_, prose) = split_page(&text);
        for (line, span) in inline_spans(&prose) {
            let place = Place {
                page: page.clone(),
                line,
            };
            named.extend(endpoint_requests(&place, &span));
        }
        // URLs in prose and in code other than shell (whose `curl` commands are examples).
        let start = Place { page, line: 1 };
        named.extend(url_requests(&start, &without_shell_blocks(&text)));
    }
    let mut seen = BTreeSet::new();
    named.retain(|r| seen.insert((r.method.to_string(), r.path.clone())));
    examples.extend(named);
    examples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_in_the_docs_reaches_an_endpoint() {
    let token = "docs-token".to_string();
    let identity = in_memory_identities("docs", &["n1"]).unwrap().remove(0);
    let node = NodeBuilder::new("n1", "docs", identity)
        .topology(Topology::new(
            TopologyKind::Mesh,
            vec!["n1".into()],
            Vec::new(),
        ))
        .start()
        .await
        .unwrap();
    let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(api::serve_with(
        node.clone(),
        listener,
        ApiOptions::new(Some(token.clone())),
        async {
            let _ = stopped.await;
        },
    ));
    let client = Client::new(&url, Some(token)).unwrap();

    let requests = shown_requests();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut failures = Vec::new();
    for r in &requests {
        let said = format!("{}: {} {}", r.place, r.method, r.path);
        eprintln!("{said}");
        let body = match &r.body_file {
            Some(file) => files.get(file).cloned(),
            None => r.body.clone(),
        };
        let known = r.body_file.is_none() || body.is_some();
        let answer = if r.path.ends_with("/watch") && r.method == Method::GET {
            match client.events(&r.path).await {
                Ok(_) => Ok((200, String::new(), Vec::new())),
                Err(concordant::client::ClientError::Status {
                    status, message, ..
                }) => Ok((status, message, Vec::new())),
                Err(e) => Err(e),
            }
        } else {
            client
                .request(r.method.clone(), &r.path, body)
                .await
                .map(|a| {
                    let message = a
                        .json()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    (a.status, message, a.body)
                })
        };
        match answer {
            Err(e) => failures.push(format!("{said}: {e}")),
            Ok((404, message, _)) if message.starts_with("no endpoint") => {
                failures.push(format!("{said}: no such endpoint"))
            }
            Ok((405, message, _)) => failures.push(format!("{said}: 405 {message}")),
            Ok((status, message, _)) if r.example && known && !(200..300).contains(&status) => {
                failures.push(format!("{said}: {status} {message}"))
            }
            Ok((_, _, answer)) => {
                if let Some(file) = &r.output {
                    files.insert(file.clone(), answer);
                }
            }
        }
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    node.shutdown().await.unwrap();
    let examples = requests.iter().filter(|r| r.example).count();
    eprintln!("{} requests checked in all", requests.len());
    report("curl examples", examples, 10, &failures);
}
