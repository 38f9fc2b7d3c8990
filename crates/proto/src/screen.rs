//! The text screen of every request: no string field of a request message, at any depth,
//! may hold a control character other than tab, line feed and carriage return.
//!
//! A NUL byte is valid UTF-8, so it decodes; PostgreSQL then refuses it in a `text` column
//! ("invalid byte sequence for encoding UTF8: 0x00") and the caller saw `INTERNAL`, while
//! SQLite stored it. Escape sequences (`\x1b[31m`) and the C1 controls reach logs and
//! terminals. Neither belongs in an identifier, a name, a filter or a password, so the codec
//! refuses them before any handler runs, naming the field: `INVALID_ARGUMENT` with the reason
//! `CONTROL_CHARACTER` and a `BadRequest` violation whose field is the path of the string
//! (`user.user_metadata.fields.value.string_value`, say).
//!
//! The screen walks the encoded bytes with the descriptors of [`crate::FILE_DESCRIPTOR_SET`]:
//! one pass, no allocation unless a field is refused, and nested messages (maps, `Struct`s)
//! included. `bytes` fields are binary and are not screened.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_types::field_descriptor_proto::Type;

/// The `ErrorInfo.reason` of a request holding a control character.
pub const CONTROL_CHARACTER: &str = "CONTROL_CHARACTER";

/// What the screen needs of a field.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A `string`: screened.
    Text,
    /// A message: walked, by its index in [`Schema::messages`].
    Message(usize),
}

#[derive(Debug, Default)]
struct MessageInfo {
    /// The fields worth looking at (strings and messages) by number, with their names.
    fields: HashMap<u32, (String, Kind)>,
}

#[derive(Debug)]
struct Schema {
    messages: Vec<MessageInfo>,
    /// Full names (`postern.authn.v1.LoginRequest`) to indices.
    by_name: HashMap<String, usize>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::from_descriptor_set(crate::FILE_DESCRIPTOR_SET))
}

impl Schema {
    fn from_descriptor_set(bytes: &[u8]) -> Self {
        use prost::Message;
        // The set is generated at build time from the same files; it always decodes.
        let set = prost_types::FileDescriptorSet::decode(bytes).unwrap_or_default();
        let mut all = Vec::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect(package, message, &mut all);
            }
        }
        let by_name: HashMap<String, usize> = all.iter().enumerate().map(|(i, (name, _))| (name.clone(), i)).collect();
        let messages = all
            .iter()
            .map(|(_, descriptor)| {
                let fields = descriptor
                    .field
                    .iter()
                    .filter_map(|f| {
                        let kind = match f.r#type() {
                            Type::String => Kind::Text,
                            Type::Message => Kind::Message(*by_name.get(f.type_name().trim_start_matches('.'))?),
                            _ => return None,
                        };
                        Some((u32::try_from(f.number()).ok()?, (f.name().to_owned(), kind)))
                    })
                    .collect();
                MessageInfo { fields }
            })
            .collect();
        Schema { messages, by_name }
    }
}

fn collect<'a>(
    scope: &str,
    message: &'a prost_types::DescriptorProto,
    out: &mut Vec<(String, &'a prost_types::DescriptorProto)>,
) {
    let name = if scope.is_empty() { message.name().to_owned() } else { format!("{scope}.{}", message.name()) };
    for nested in &message.nested_type {
        collect(&name, nested, out);
    }
    out.push((name, message));
}

/// A string field holding a control character: its path and the first offending character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The dotted path of the field from the request (`user.email`).
    pub field: String,
    /// The first control character found.
    pub character: char,
}

/// Screens the encoded request `bytes` of the message `full_name`: `Err` names the first
/// string field that holds a control character. Messages the descriptor set does not hold,
/// and bytes that do not parse (the decoder has refused them already), pass.
pub fn screen(full_name: &str, bytes: &[u8]) -> Result<(), Refused> {
    let schema = schema();
    let Some(&index) = schema.by_name.get(full_name) else { return Ok(()) };
    let mut path = Vec::new();
    walk(schema, index, bytes, &mut path, 0)
}

/// Nesting past this is refused by prost's decoder before the screen runs.
const MAX_DEPTH: usize = 100;

fn walk<'s>(
    schema: &'s Schema,
    index: usize,
    mut bytes: &[u8],
    path: &mut Vec<&'s str>,
    depth: usize,
) -> Result<(), Refused> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let info = &schema.messages[index];
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes) else { return Ok(()) };
        let number = u32::try_from(key >> 3).unwrap_or(0);
        match key & 7 {
            0 => {
                if varint(&mut bytes).is_none() {
                    return Ok(());
                }
            }
            1 => {
                let Some(rest) = bytes.get(8..) else { return Ok(()) };
                bytes = rest;
            }
            5 => {
                let Some(rest) = bytes.get(4..) else { return Ok(()) };
                bytes = rest;
            }
            2 => {
                let Some(len) = varint(&mut bytes).and_then(|l| usize::try_from(l).ok()) else { return Ok(()) };
                let Some(value) = bytes.get(..len) else { return Ok(()) };
                bytes = &bytes[len..];
                match info.fields.get(&number) {
                    Some((name, Kind::Text)) => {
                        if let Some(character) = control(value) {
                            path.push(name);
                            return Err(Refused { field: path.join("."), character });
                        }
                    }
                    Some((name, Kind::Message(nested))) => {
                        path.push(name);
                        walk(schema, *nested, value, path, depth + 1)?;
                        path.pop();
                    }
                    None => {}
                }
            }
            // Groups (proto2) and invalid wire types: the decoder has judged the bytes.
            _ => return Ok(()),
        }
    }
    Ok(())
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The first control character of `text` other than tab, line feed and carriage return:
/// C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F, encoded `C2 80`–`C2 9F`).
fn control(text: &[u8]) -> Option<char> {
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f {
            return Some(char::from(b));
        }
        if b == 0xc2 && text.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) {
            return char::from_u32(u32::from(text[i + 1]));
        }
        i += 1;
    }
    None
}

/// The status of a refused request.
pub fn refused(refused: &Refused) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let description = format!(
        "contains the control character U+{:04X}; text may hold tab, line feed and carriage return but no other \
         control character",
        u32::from(refused.character)
    );
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(refused.field.clone(), description.clone());
    details.set_error_info(CONTROL_CHARACTER, "postern", HashMap::new());
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid request: {} {description}", refused.field),
        details,
    )
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::authn::v1 as authn;
    use crate::tenant::v1 as tenant;

    #[test]
    fn control_characters_are_found() {
        assert_eq!(control(b"plain text\twith\r\nbreaks"), None);
        assert_eq!(control("accents \u{e9}\u{e8} and \u{a0}".as_bytes()), None);
        assert_eq!(control(b"a\0b"), Some('\0'));
        assert_eq!(control(b"\x1b[31m"), Some('\u{1b}'));
        assert_eq!(control(b"del\x7f"), Some('\u{7f}'));
        assert_eq!(control("c1 \u{85}".as_bytes()), Some('\u{85}'));
        assert_eq!(control("c1 \u{9f}".as_bytes()), Some('\u{9f}'));
    }

    #[test]
    fn top_level_string_fields_are_screened() {
        let request = tenant::GetTenantRequest { name: "acme\0".into() };
        let refused = screen("postern.tenant.v1.GetTenantRequest", &request.encode_to_vec()).expect_err("NUL");
        assert_eq!(refused, Refused { field: "name".into(), character: '\0' });
        let fine = tenant::GetTenantRequest { name: "acme".into() };
        assert_eq!(screen("postern.tenant.v1.GetTenantRequest", &fine.encode_to_vec()), Ok(()));
    }

    #[test]
    fn nested_messages_and_structs_are_screened() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "nick".to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("bad\u{1b}".into())) },
        );
        let request =
            authn::SignupRequest { user_metadata: Some(prost_types::Struct { fields }), ..Default::default() };
        let refused = screen("postern.authn.v1.SignupRequest", &request.encode_to_vec()).expect_err("ESC in metadata");
        assert_eq!(refused.field, "user_metadata.fields.value.string_value");
        assert_eq!(refused.character, '\u{1b}');
    }

    #[test]
    fn unknown_messages_and_garbage_pass_to_the_decoder() {
        assert_eq!(screen("no.such.Message", b"\0\0"), Ok(()));
        assert_eq!(screen("postern.tenant.v1.GetTenantRequest", &[0x0a, 0x7f]), Ok(()));
        assert_eq!(screen("postern.tenant.v1.GetTenantRequest", &[0xff; 12]), Ok(()));
    }

    #[test]
    fn the_status_names_the_field() {
        let status = refused(&Refused { field: "username".into(), character: '\0' });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("username"), "{}", status.message());
        assert!(status.message().contains("U+0000"), "{}", status.message());
    }
}
