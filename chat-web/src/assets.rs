//! The page, embedded in the binary: plain HTML, CSS and JavaScript, no build step.
//!
//! The script renders every name and message with `textContent` (never `innerHTML`), and
//! the server's Content-Security-Policy allows no inline script, so text from the chat is
//! only ever text.

/// The single page.
pub const INDEX_HTML: &str = include_str!("../static/index.html");
/// The page's script.
pub const APP_JS: &str = include_str!("../static/app.js");
/// The page's style sheet.
pub const APP_CSS: &str = include_str!("../static/app.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_never_parses_html() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        for handler in [
            "onclick=",
            "onload=",
            "onerror=",
            "onsubmit=",
            "javascript:",
        ] {
            assert!(!INDEX_HTML.contains(handler), "inline handler {handler}");
        }
    }
}
