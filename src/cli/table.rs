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

#[cfg(test)]
mod tests {
    use super::*;

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
