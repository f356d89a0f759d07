//! The two XML bodies of the blob endpoint: the block list a client commits (Put Block List)
//! and Azure Storage's error body.

/// The block ids of a Put Block List body, in order:
/// `<BlockList><Latest>id</Latest><Uncommitted>id</Uncommitted>...</BlockList>`. Every entry
/// names a staged block here (`Committed` too: the hub keeps no block list of a committed blob,
/// so re-committing part of one is refused as an unknown block). `None` when the body is not
/// such a list.
pub(crate) fn block_list(body: &str) -> Option<Vec<String>> {
    let start = body.find("<BlockList>")? + "<BlockList>".len();
    let end = body[start..].find("</BlockList>")? + start;
    let mut rest = body[start..end].trim();
    let mut ids = Vec::new();
    while !rest.is_empty() {
        let open_end = rest.strip_prefix('<')?.find('>')? + 1;
        let tag = &rest[1..open_end];
        if !matches!(tag, "Latest" | "Committed" | "Uncommitted") {
            return None;
        }
        let close = format!("</{tag}>");
        let inner_end = rest.find(&close)?;
        let id = rest[open_end + 1..inner_end].trim();
        ids.push(unescape(id)?);
        rest = rest[inner_end + close.len()..].trim_start();
    }
    Some(ids)
}

/// XML's five predefined entities (a base64 id needs none, but a client may escape anyway).
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let semi = rest[i..].find(';')? + i;
        out.push(match &rest[i + 1..semi] {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => return None,
        });
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `s` with `&`, `<`, `>` escaped for XML text.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Azure Storage's error body: `<Error><Code>..</Code><Message>..\nRequestId:..\nTime:..
/// </Message>[<AuthenticationErrorDetail>..</AuthenticationErrorDetail>]</Error>`.
pub(crate) fn error_body(
    code: &str,
    message: &str,
    request_id: &str,
    time: &str,
    detail: Option<&str>,
) -> String {
    let detail = detail
        .map(|d| {
            format!(
                "<AuthenticationErrorDetail>{}</AuthenticationErrorDetail>",
                escape(d)
            )
        })
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{}\nRequestId:{request_id}\nTime:{time}</Message>{detail}</Error>",
        escape(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_list_reads_in_order() {
        let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<BlockList>\
                    <Latest>QUFB</Latest><Uncommitted>QkJC</Uncommitted>\
                    <Committed>Q0&amp;D</Committed></BlockList>";
        assert_eq!(
            block_list(body),
            Some(vec!["QUFB".into(), "QkJC".into(), "Q0&D".into()])
        );
        assert_eq!(block_list("<BlockList></BlockList>"), Some(vec![]));
        assert_eq!(block_list("<BlockList><Other>x</Other></BlockList>"), None);
        assert_eq!(block_list("<BlockList><Latest>x</BlockList>"), None);
        assert_eq!(block_list("nonsense"), None);
    }

    #[test]
    fn an_error_body_escapes_what_it_quotes() {
        let b = error_body("AuthenticationFailed", "m", "rid", "t", Some("se [<x>]"));
        assert!(b.contains("<Code>AuthenticationFailed</Code>"), "{b}");
        assert!(b.contains("se [&lt;x&gt;]"), "{b}");
    }
}
