//! Raw gRPC calls built from the contracts' own descriptors: what a hostile or broken client
//! puts on the wire. The suites that must cover every method (hostile input, tenant
//! isolation) list the methods from the same descriptor set that reflection serves, so a new
//! method is covered without editing them.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use tonic::transport::Channel;

/// A method the gateway serves.
#[derive(Debug, Clone)]
pub struct Method {
    /// The gRPC path, `/postern.tenant.v1.TenantService/GetTenant`.
    pub path: String,
    /// The full name of its request message, `postern.tenant.v1.GetTenantRequest`.
    pub input: String,
    /// Whether the server answers with a stream.
    pub server_streaming: bool,
}

struct Descriptors {
    methods: Vec<Method>,
    messages: HashMap<String, DescriptorProto>,
}

fn descriptors() -> &'static Descriptors {
    static D: OnceLock<Descriptors> = OnceLock::new();
    D.get_or_init(|| {
        let set = prost_types::FileDescriptorSet::decode(postern_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("the generated descriptor set decodes: {e}"));
        let mut methods = Vec::new();
        let mut messages = HashMap::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect(package, message, &mut messages);
            }
            if package.starts_with("postern.customdb") {
                continue; // implemented by customers, not served
            }
            for service in &file.service {
                for method in &service.method {
                    methods.push(Method {
                        path: format!("/{package}.{}/{}", service.name(), method.name()),
                        input: method.input_type().trim_start_matches('.').to_owned(),
                        server_streaming: method.server_streaming(),
                    });
                }
            }
        }
        Descriptors { methods, messages }
    })
}

fn collect(scope: &str, message: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested, out);
    }
    out.insert(name, message.clone());
}

/// Every method of every contract the gateway serves, as reflection lists them.
pub fn methods() -> &'static [Method] {
    &descriptors().methods
}

/// The descriptor of the message `full_name` (`postern.authn.v1.LoginRequest`).
pub fn message(full_name: &str) -> Option<&'static DescriptorProto> {
    descriptors().messages.get(full_name.trim_start_matches('.'))
}

/// The wire type of a field of type `ty` (packed repeated scalars aside).
pub fn wire_type(field: &FieldDescriptorProto) -> u8 {
    match field.r#type() {
        Type::Double | Type::Fixed64 | Type::Sfixed64 => 1,
        Type::Float | Type::Fixed32 | Type::Sfixed32 => 5,
        Type::String | Type::Bytes | Type::Message | Type::Group => 2,
        _ => 0,
    }
}

/// Whether `field` is repeated (maps included).
pub fn repeated(field: &FieldDescriptorProto) -> bool {
    field.label() == Label::Repeated
}

/// Appends the protobuf varint `n` to `out`.
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a length-delimited field (string, bytes, message).
pub fn put_len(out: &mut Vec<u8>, number: i32, value: &[u8]) {
    put_varint(out, (u64::from(number.unsigned_abs()) << 3) | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Appends a varint field (integers, booleans, enums; negative numbers as two's complement,
/// as `int32`/`int64` encode them).
pub fn put_varint_field(out: &mut Vec<u8>, number: i32, value: u64) {
    put_varint(out, u64::from(number.unsigned_abs()) << 3);
    put_varint(out, value);
}

/// Appends a fixed-width field of wire type 1 (8 bytes) or 5 (4 bytes).
pub fn put_fixed(out: &mut Vec<u8>, number: i32, wire: u8, value: u64) {
    put_varint(out, (u64::from(number.unsigned_abs()) << 3) | u64::from(wire));
    if wire == 1 {
        out.extend_from_slice(&value.to_le_bytes());
    } else {
        out.extend_from_slice(&(value as u32).to_le_bytes());
    }
}

/// A codec that sends the given bytes as the message and takes any answer's bytes as they
/// are.
#[derive(Clone, Default)]
pub struct RawCodec;

/// [`RawCodec`]'s encoder and decoder.
#[derive(Clone, Default)]
pub struct RawCoder;

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

/// What a raw call came to.
#[derive(Debug)]
pub enum Answer {
    /// A message (the first, for a stream; empty for a stream that ended cleanly).
    Ok(Vec<u8>),
    /// A status.
    Status(tonic::Status),
    /// Nothing within the time allowed: a stream left open (or a call that hangs).
    Open,
}

impl Answer {
    /// The status's code and `ErrorInfo` reason, `Ok` for success, `Open` for no answer: what
    /// two answers are compared by.
    pub fn shape(&self) -> String {
        match self {
            Answer::Ok(_) => "Ok".to_owned(),
            Answer::Open => "Open".to_owned(),
            Answer::Status(s) => format!("{:?} {}", s.code(), crate::reason(s).unwrap_or_default()),
        }
    }
}

/// Calls `path` (unary or server streaming alike: the first answer decides) with `bytes` as
/// the request message, with `key` as the bearer when given, waiting at most `within`.
pub async fn call(ch: &Channel, path: &str, bytes: Vec<u8>, key: Option<&str>, within: Duration) -> Answer {
    let call = async {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let mut req = tonic::Request::new(bytes);
        if let Some(key) = key {
            let value = format!("Bearer {key}").parse().map_err(|_| tonic::Status::internal("key is not ASCII"))?;
            req.metadata_mut().insert("authorization", value);
        }
        let path = http::uri::PathAndQuery::try_from(path.to_owned())
            .map_err(|e| tonic::Status::internal(format!("bad path: {e}")))?;
        let answer = grpc.server_streaming(req, path, RawCodec).await?;
        answer.into_inner().message().await.map(Option::unwrap_or_default)
    };
    match tokio::time::timeout(within, call).await {
        Ok(Ok(message)) => Answer::Ok(message),
        Ok(Err(status)) => Answer::Status(status),
        Err(_) => Answer::Open,
    }
}

/// One tenant's real resources, for requests that reach past the first lookup: a regular
/// web client, a database connection enabled for it, two users and an API key.
#[derive(Debug, Clone)]
pub struct Resources {
    /// The tenant's name.
    pub tenant: String,
    /// The client's id.
    pub client_id: String,
    /// The client's secret.
    pub client_secret: String,
    /// The database connection's name.
    pub connection: String,
    /// The first user's email address.
    pub email: String,
    /// The first user's password.
    pub password: String,
    /// The first user's id.
    pub user_id: String,
    /// The second user's id.
    pub other_user_id: String,
    /// The API key's id.
    pub key_id: String,
    /// The API key itself (full tenant scope).
    pub key: String,
}

impl Resources {
    /// Creates `tenant` and its resources through `admin`.
    pub async fn create(admin: &mut crate::Clients, tenant: &str) -> Result<Self, tonic::Status> {
        use postern_proto::authn::v1 as authn;
        use postern_proto::tenant::v1 as pb;
        admin.create_tenant(tenant).await?;
        let client = admin.create_client(tenant, "Portal").await?;
        let connection = format!("{tenant}-users");
        admin.create_database_connection(tenant, &connection, &client.client_id).await?;
        let password = "Wonder-Land-42!".to_owned();
        let mut user_ids = Vec::new();
        for who in ["alice", "bob"] {
            let user = admin
                .authn
                .signup(authn::SignupRequest {
                    tenant: tenant.into(),
                    client_id: client.client_id.clone(),
                    connection: connection.clone(),
                    email: format!("{who}@{tenant}.example"),
                    password: password.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .user
                .ok_or_else(|| tonic::Status::internal("no user in the answer"))?;
            user_ids.push(user.user_id);
        }
        let key = admin
            .keys
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant.into(),
                api_key: Some(pb::ApiKey { description: "resources".into(), ..Default::default() }),
            })
            .await?
            .into_inner()
            .api_key
            .ok_or_else(|| tonic::Status::internal("no key in the answer"))?;
        let other_user_id = user_ids.pop().unwrap_or_default();
        let user_id = user_ids.pop().unwrap_or_default();
        Ok(Self {
            tenant: tenant.into(),
            client_id: client.client_id,
            client_secret: client.client_secret,
            connection,
            email: format!("alice@{tenant}.example"),
            password,
            user_id,
            other_user_id,
            key_id: key.id,
            key: key.key,
        })
    }

    /// Resources of the same shapes that do not exist: a tenant nobody created, ids that
    /// were never issued.
    pub fn missing(&self, tenant: &str) -> Self {
        let swap = |id: &str| {
            id.chars()
                .map(|c| match c {
                    '0'..='8' => char::from(c as u8 + 1),
                    '9' => '0',
                    'a'..='y' => char::from(c as u8 + 1),
                    'z' => 'a',
                    'A'..='Y' => char::from(c as u8 + 1),
                    'Z' => 'A',
                    other => other,
                })
                .collect::<String>()
        };
        Self {
            tenant: tenant.into(),
            client_id: swap(&self.client_id),
            client_secret: swap(&self.client_secret),
            connection: format!("{tenant}-users"),
            email: format!("alice@{tenant}.example"),
            password: self.password.clone(),
            user_id: swap(&self.user_id),
            other_user_id: swap(&self.other_user_id),
            key_id: swap(&self.key_id),
            key: swap(&self.key),
        }
    }

    /// What these resources put in the string field `field` of the message `message` (by
    /// the field's name), if anything. Secrets a caller would not know (the client secret,
    /// the API key) are left out unless `with_secrets`.
    pub fn value(&self, message: &str, field: &str, with_secrets: bool) -> Option<String> {
        let short = message.rsplit('.').next().unwrap_or(message);
        Some(match field {
            "tenant" => self.tenant.clone(),
            "name" if short.contains("Tenant") => self.tenant.clone(),
            "name" if short.contains("Connection") => self.connection.clone(),
            "connection" => self.connection.clone(),
            "client_id" => self.client_id.clone(),
            "client_secret" if with_secrets => self.client_secret.clone(),
            "email" | "username" | "login_hint" => self.email.clone(),
            "password" if with_secrets => self.password.clone(),
            "user_id" | "identity_user_id" => self.user_id.clone(),
            "secondary_user_id" => self.other_user_id.clone(),
            "id" if short.contains("ApiKey") => self.key_id.clone(),
            "redirect_uri" => "https://app.example.com/callback".to_owned(),
            _ => return None,
        })
    }

    /// A request of type `message` aimed at these resources: every string field these
    /// resources have a value for, in nested messages of the contract too (one level: the
    /// `tenant`, `client`, `connection` or `user` of a create or update), except the field
    /// numbered `skip`.
    pub fn request(&self, message: &str, skip: Option<i32>, with_secrets: bool) -> Vec<u8> {
        self.fill(message, skip, with_secrets, 0)
    }

    fn fill(&self, message: &str, skip: Option<i32>, with_secrets: bool, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(descriptor) = self::message(message) else { return out };
        for field in &descriptor.field {
            if Some(field.number()) == skip || repeated(field) {
                continue;
            }
            match field.r#type() {
                Type::String => {
                    if let Some(value) = self.value(message, field.name(), with_secrets) {
                        put_len(&mut out, field.number(), value.as_bytes());
                    }
                }
                Type::Message if depth == 0 && field.type_name().starts_with(".postern.") => {
                    let nested = self.fill(field.type_name(), None, with_secrets, depth + 1);
                    if !nested.is_empty() {
                        put_len(&mut out, field.number(), &nested);
                    }
                }
                _ => {}
            }
        }
        out
    }
}
