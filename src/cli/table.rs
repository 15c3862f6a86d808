//! Tables laid out as in the reference manual: a header, a rule of dashes
//! under each column, columns separated by one space, the last column not
//! padded. Lines that do not belong to a column (the totals line of
//! `list-storage-nodes`) are passed through as they are.

/// One printed line: either a row of cells or free text below a row.
pub enum Line {
    Row(Vec<String>),
    Text(String),
}

pub fn render(headers: &[&str], lines: &[Line]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for l in lines {
        if let Line::Row(cells) = l {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let fmt_row = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        parts.join(" ").trim_end().to_string()
    };
    let mut out = String::new();
    out += &fmt_row(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out.push('\n');
    let rule: Vec<String> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            "-".repeat(if i + 1 == headers.len() {
                h.chars().count()
            } else {
                widths[i]
            })
        })
        .collect();
    out += &rule.join(" ");
    out.push('\n');
    for l in lines {
        match l {
            Line::Row(cells) => out += &fmt_row(cells),
            Line::Text(t) => out += t,
        }
        out.push('\n');
    }
    out
}

/// A table as the reference's restore commands print it: a title row, then
/// `| cell | cell |` rows padded to the widest cell, the last column at
/// least as wide as the title needs.
pub fn render_pipes(title: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    // "| a | b |": cells plus " | " between them and "| " / " |" around.
    let inner = |w: &[usize]| w.iter().sum::<usize>() + 3 * (w.len() - 1);
    if inner(&widths) < title.chars().count() {
        let last = widths.len() - 1;
        widths[last] += title.chars().count() - inner(&widths);
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", parts.join(" | "))
    };
    let mut out = format!("| {title:<w$} |\n", w = inner(&widths));
    out += &line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        out += &line(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_match_reference() {
        let t = render_pipes(
            "Volumes",
            &["ID", "Name", "Status"],
            &[vec!["1".into(), "vol01".into(), "Operational".into()]],
        );
        assert_eq!(
            t,
            "| Volumes                  |\n| ID | Name  | Status      |\n| 1  | vol01 | Operational |\n"
        );
    }

    #[test]
    fn layout_matches_reference() {
        let t = render(
            &["ID", "Job", "Parameters"],
            &[Line::Row(vec![
                "236887".into(),
                "IMPORT".into(),
                "path=/spacedata;s3-host-id=6".into(),
            ])],
        );
        assert_eq!(
            t,
            "ID     Job    Parameters\n------ ------ ----------\n236887 IMPORT path=/spacedata;s3-host-id=6\n"
        );
    }
}
