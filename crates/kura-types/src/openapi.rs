//! OpenAPI schemas (utoipa) of the types whose JSON form is written by hand, for the
//! daemon's API document (feature `openapi`). The derived types (`JobSettings`, the window
//! policies) carry `#[derive(ToSchema)]` where they are defined; these two have custom serde
//! impls, so their schemas say what those impls accept: a size is a number of bytes or a
//! text in the size grammar, a duration a text in the duration grammar or a number of
//! seconds.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};

use crate::{ByteSize, Duration};

impl utoipa::PartialSchema for ByteSize {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .examples(["64MiB", "512K", "10GB"]),
            )
            .description(Some(
                "A size: a number of bytes, or a text such as `64MiB`, `512K`, `1.5GiB`, `10GB` \
                 (K/KiB = 1024, KB = 1000). Answered as a number of bytes.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ByteSize {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ByteSize")
    }
}

impl utoipa::PartialSchema for Duration {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .examples(["30s", "1h30m", "2d"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0)),
            )
            .description(Some(
                "A duration: a text such as `500ms`, `30s`, `2m`, `1h30m`, `2d`, `1w`, or a \
                 number of seconds. Answered as text.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Duration {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Duration")
    }
}
