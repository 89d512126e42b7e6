//! The topology file's edits by `add-node` and `remove-node` (a node's `[[node]]` table and
//! its `[[link]]` tables added or removed) and by `init-tokens` (`[api] token_key` set),
//! everything else (comments, order, formatting, `[tuning]`) left as it was.
//!
//! The file is edited as a TOML document (`toml_edit`), never line by line, after the
//! cluster recorded the change (the cluster's rules decide; the file follows), and checked
//! by [`Config::parse`] before it is written; it is then replaced atomically
//! ([`crate::files`]), its previous version kept as `FILE.bak`. Owns the edits; the rules of
//! a valid topology are [`crate::config`]'s.

use std::net::SocketAddr;
use std::path::Path;

use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use super::{io, AdminError};
use crate::config::Config;
use crate::files::{self, Access};

/// What `add-node` writes after the new node's header.
const ADDED: &str = "  # added by `concordant add-node`";

/// `text` with a `[[node]]` table for the new node after the file's last one, and a
/// `[[link]]` table to each of `links` after the last link.
pub(super) fn with_node(
    text: &str,
    id: &str,
    peer: SocketAddr,
    api: SocketAddr,
    links: &[String],
) -> Result<String, String> {
    let mut doc = parse(text)?;
    let mut node = Table::new();
    node["id"] = value(id);
    node["peer"] = value(peer.to_string());
    node["api"] = value(api.to_string());
    node["data"] = value(format!("data/{id}"));
    node.decor_mut().set_prefix("\n");
    node.decor_mut().set_suffix(ADDED);
    tables(&mut doc, "node")?.push(node);
    for other in links {
        let mut link = Table::new();
        link["a"] = value(id);
        link["b"] = value(other.as_str());
        link.decor_mut().set_prefix("\n");
        tables(&mut doc, "link")?.push(link);
    }
    Ok(doc.to_string())
}

/// `text` without the `[[node]]` table of `id` and without the `[[link]]` tables that name
/// it. A comment right above a removed table goes with it; one set apart by a blank line
/// introduces what follows and stays, above the next table of the same kind.
pub(super) fn without_node(text: &str, id: &str) -> Result<String, String> {
    let mut doc = parse(text)?;
    let names = |t: &Table, key: &str| t.get(key).and_then(Item::as_str) == Some(id);
    if doc.contains_key("node") {
        remove_tables(tables(&mut doc, "node")?, |t| names(t, "id"));
    }
    if doc.contains_key("link") {
        remove_tables(tables(&mut doc, "link")?, |t| {
            names(t, "a") || names(t, "b")
        });
    }
    Ok(doc.to_string())
}

/// `text` with `token_key = key` in its `[api]` table (made if the file has none).
pub(super) fn with_token_key(text: &str, key: &str) -> Result<String, String> {
    let mut doc = parse(text)?;
    let api = doc
        .entry("api")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.decor_mut().set_prefix("\n");
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or("`api` is not written as an [api] table; edit it by hand")?;
    api["token_key"] = value(key);
    Ok(doc.to_string())
}

/// A change to the topology file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change<'a> {
    /// The public key of user tokens named (see [`with_token_key`]).
    TokenKey {
        /// Its path, as written in the file.
        key: &'a str,
    },
    /// A node and its links added (see [`with_node`]).
    AddNode {
        /// The new node's id.
        id: &'a str,
        /// Its peer address.
        peer: SocketAddr,
        /// Its API address.
        api: SocketAddr,
        /// The nodes it links to (edges topologies).
        links: &'a [String],
    },
    /// A node and its links removed (see [`without_node`]).
    RemoveNode {
        /// The node's id.
        id: &'a str,
    },
}

impl Change<'_> {
    /// The file at `path` as read now, and as it would be after the change; an error if
    /// it cannot be edited or the result would not load.
    fn edit(&self, path: &Path) -> Result<(String, String), AdminError> {
        let old = std::fs::read_to_string(path).map_err(io(path))?;
        let new = match *self {
            Change::AddNode {
                id,
                peer,
                api,
                links,
            } => with_node(&old, id, peer, api, links),
            Change::RemoveNode { id } => without_node(&old, id),
            Change::TokenKey { key } => with_token_key(&old, key),
        }
        .map_err(|detail| AdminError::Edit {
            path: path.to_path_buf(),
            detail,
        })?;
        Config::parse(&new, path).map_err(|e| AdminError::Edit {
            path: path.to_path_buf(),
            detail: format!("the edited file would not load ({e})"),
        })?;
        Ok((old, new))
    }
}

/// Makes `change` to the file at `path` as it is now: the previous file is kept as
/// `FILE.bak` and the new one replaces it atomically. Nothing is written if the change
/// changes nothing.
pub(super) fn apply(path: &Path, change: Change<'_>) -> Result<(), AdminError> {
    let (old, new) = change.edit(path)?;
    if new == old {
        return Ok(());
    }
    files::backup(path).map_err(io(path))?;
    files::write_atomic(path, new.as_bytes(), Access::Keep).map_err(io(path))
}

fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>().map_err(|e| e.to_string())
}

/// The array of `[[key]]` tables, made if the file has none.
fn tables<'a>(doc: &'a mut DocumentMut, key: &str) -> Result<&'a mut ArrayOfTables, String> {
    doc.entry(key)
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| format!("`{key}` is not written as [[{key}]] tables; edit it by hand"))
}

/// Removes the tables for which `gone` holds; the comments that introduce a removed table
/// (above it, set apart by a blank line) move to the next table kept.
fn remove_tables(array: &mut ArrayOfTables, gone: impl Fn(&Table) -> bool) {
    let mut carried = String::new();
    let mut i = 0;
    while i < array.len() {
        let Some(table) = array.get_mut(i) else {
            break;
        };
        let prefix = table
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_string();
        if gone(table) {
            let (section, _own) = split_prefix(&prefix);
            if section.contains('#') {
                carried.push_str(section);
            }
            array.remove(i);
            continue;
        }
        if !carried.is_empty() {
            // Its own introduction, if it has one, stays after the one carried.
            let (section, own) = split_prefix(&prefix);
            let kept = if section.contains('#') { &prefix } else { own };
            let moved = std::mem::take(&mut carried);
            table.decor_mut().set_prefix(format!("{moved}{kept}"));
        }
        i += 1;
    }
}

/// A table's prefix split into what introduces a section (up to its last blank line) and
/// the comment lines right above the table's header.
fn split_prefix(prefix: &str) -> (&str, &str) {
    let mut at = 0;
    let mut pos = 0;
    for line in prefix.split_inclusive('\n') {
        pos += line.len();
        if line.trim().is_empty() {
            at = pos;
        }
    }
    prefix.split_at(at)
}

#[cfg(test)]
mod tests;
