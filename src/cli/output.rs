//! Printing: readable tables or JSON.

use serde::Serialize;

pub use crate::client::json::ServerJson;
use crate::registry::Transport;

pub fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// Left-aligned columns, two spaces apart.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn server_row(server: &ServerJson) -> Vec<String> {
    let (kind, target) = match &server.spec.transport {
        Transport::Stdio { command, args, .. } => {
            let mut target = command.clone();
            for arg in args {
                target.push(' ');
                target.push_str(arg);
            }
            ("stdio", target)
        }
        Transport::Http { url, .. } => ("http", url.clone()),
    };
    let target = if target.chars().count() > 60 {
        format!("{}...", target.chars().take(57).collect::<String>())
    } else {
        target
    };
    vec![
        server.spec.name.clone(),
        server.spec.replicas.to_string(),
        kind.to_string(),
        target,
        server.mod_revision.to_string(),
    ]
}

pub const SERVER_HEADER: [&str; 5] = ["NAME", "REPLICAS", "TRANSPORT", "TARGET", "REVISION"];
