//! A small read-only element tree over `quick_xml`, for the parts of a response this crate
//! reads itself before (or beside) samael: the encrypted assertion's structure, the
//! signatures' algorithms, and where the root's children lie in the text (so that a
//! decrypted assertion takes its encrypted form's place byte for byte).
//!
//! Every element keeps its namespace, its byte span in the source, its attributes, its
//! direct text and its children. Documents with a DTD are refused (SAML forbids them, and
//! no entity is ever expanded).

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// The SAML protocol namespace.
pub(crate) const PROTOCOL_NS: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
/// The SAML assertion namespace.
pub(crate) const ASSERTION_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
/// The XML Signature namespace.
pub(crate) const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// The XML Encryption namespace.
pub(crate) const XENC_NS: &str = "http://www.w3.org/2001/04/xmlenc#";
/// The XML Encryption 1.1 namespace.
pub(crate) const XENC11_NS: &str = "http://www.w3.org/2009/xmlenc11#";

/// One element.
#[derive(Debug, Default)]
pub(crate) struct Element {
    /// Its namespace URI; empty for none.
    pub ns: String,
    /// Its local name.
    pub name: String,
    /// Its attributes by local name, values as written (no entity is expanded).
    pub attributes: Vec<(String, String)>,
    /// Its direct text, concatenated.
    pub text: String,
    /// Its child elements.
    pub children: Vec<Element>,
    /// Where it starts (`<`) and ends (after `>` of its end tag) in the source.
    pub span: (usize, usize),
}

impl Element {
    /// Whether this is `{ns}name`.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// An attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first direct child `{ns}name`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// Every element `{ns}name` at any depth below this one (not this one), in document order.
    pub fn descendants<'a>(&'a self, ns: &str, name: &str, out: &mut Vec<&'a Element>) {
        for c in &self.children {
            if c.is(ns, name) {
                out.push(c);
            }
            c.descendants(ns, name, out);
        }
    }
}

fn position(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

/// Parses `xml` into its root element.
pub(crate) fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = quick_xml::reader::NsReader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let before = position(reader.buffer_position());
        let (ns, event) = reader.read_resolved_event().map_err(|e| format!("the document is not XML: {e}"))?;
        match event {
            Event::DocType(_) => return Err("the document carries a document type (DTD), which SAML forbids".into()),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let ns = match ns {
                    ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
                    _ => String::new(),
                };
                let mut element = Element {
                    ns,
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    span: (before, position(reader.buffer_position())),
                    ..Element::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| format!("the document is not XML: {e}"))?;
                    element.attributes.push((
                        String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                        String::from_utf8_lossy(&a.value).into_owned(),
                    ));
                }
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None if root.is_none() => root = Some(element),
                        None => return Err("the document has more than one root element".into()),
                    }
                } else {
                    stack.push(element);
                }
            }
            Event::Text(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&t.decode().map_err(|e| format!("the document is not UTF-8: {e}"))?);
                }
            }
            Event::CData(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&t.decode().map_err(|e| format!("the document is not UTF-8: {e}"))?);
                }
            }
            Event::End(_) => {
                let mut done = stack.pop().ok_or("the document is not XML: an end tag without a start")?;
                done.span.1 = position(reader.buffer_position());
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None if root.is_none() => root = Some(done),
                    None => return Err("the document has more than one root element".into()),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("the document is not XML: an element is not closed".into());
    }
    root.ok_or_else(|| "the document has no root element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_elements() {
        let xml = r#"<r xmlns="urn:a" xmlns:b="urn:b"><b:x k="v">t<y/></b:x> <z/></r>"#;
        let root = parse(xml).expect("xml");
        assert!(root.is("urn:a", "r"));
        let x = root.child("urn:b", "x").expect("x");
        assert_eq!(&xml[x.span.0..x.span.1], r#"<b:x k="v">t<y/></b:x>"#);
        assert_eq!(x.attribute("k"), Some("v"));
        assert_eq!(x.text, "t");
        let z = root.child("urn:a", "z").expect("z");
        assert_eq!(&xml[z.span.0..z.span.1], "<z/>");
        assert_eq!((root.span.0, root.span.1), (0, xml.len()));
        assert!(parse("<!DOCTYPE r><r/>").is_err());
        assert!(parse("<r><a></r>").is_err());
    }
}
