//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint, generated from the
//! handlers' annotations and the request and response types (utoipa), with examples.

use std::sync::LazyLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use super::{audit, check, keys, tenant_usage, tenants};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate service API",
        description = "Rate limit checks and usage for callers outside Envoy, and tenants and API keys \
            at runtime for domains with an authorization: section. Checks go through the same limiter, \
            buckets and store as Envoy's calls. Management endpoints (tenants, keys, audit) require \
            `Authorization: Bearer <admin token>`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        check::allow, check::check, check::usage, check::record_usage,
        tenants::list, tenants::create, tenants::get, tenants::update, tenants::delete,
        keys::create_key, keys::delete_key, tenant_usage::usage,
        audit::audit_log, document,
    ),
    modifiers(&AdminToken, &LateAnswers),
    tags(
        (name = "check", description = "Take units, or learn that a limit is over (200 or 429)."),
        (name = "usage", description = "What is left, and usage already spent."),
        (name = "tenants", description = "Runtime tenants of domains with an authorization: section."),
        (name = "keys", description = "Their API keys: shown once, stored as digests."),
        (name = "audit", description = "Every change to runtime tenants: who, what, when."),
        (name = "meta", description = "This document."),
    ),
)]
struct ApiDoc;

/// Declares the admin token's bearer scheme that management endpoints name.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An admin token whose sha256: digest is in --api-admin-token-file.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("admin_token", SecurityScheme::Http(scheme));
    }
}

/// Declares the 408 every endpoint may answer: a request not complete (a body sent too slowly)
/// within the port's request timeout (`--admin-request-timeout`).
struct LateAnswers;

impl utoipa::Modify for LateAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let late = ResponseBuilder::new()
            .description("The request was not complete within the port's request timeout.")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("408".to_owned())
                    .or_insert_with(|| late.clone().into());
            }
        }
    }
}

/// The document, as served.
pub fn json() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let written = serde_json::to_value(ApiDoc::openapi()).and_then(|mut document| {
            camel_case_links(&mut document);
            serde_json::to_string_pretty(&document)
        });
        written.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot write the OpenAPI document");
            String::new()
        })
    });
    &DOCUMENT
}

/// Spells the fields of response links as OpenAPI does (`operationId`): utoipa 5 writes them
/// in snake case. (utoipa 6 does it right, but needs Rust 1.88.)
fn camel_case_links(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    let responses = operations
        .filter_map(|operation| operation.get_mut("responses"))
        .filter_map(Value::as_object_mut)
        .flat_map(|responses| responses.values_mut());
    let links = responses
        .filter_map(|response| response.get_mut("links"))
        .filter_map(Value::as_object_mut)
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.",
               content_type = "application/json", body = Object)))]
pub async fn document() -> Response {
    match json() {
        "" => (StatusCode::INTERNAL_SERVER_ERROR, "no OpenAPI document").into_response(),
        text => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_endpoint() {
        let document: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
        assert_eq!(
            paths,
            [
                "/allow",
                "/openapi.json",
                "/v1/audit",
                "/v1/check",
                "/v1/domains/{domain}/tenants",
                "/v1/domains/{domain}/tenants/{id}",
                "/v1/domains/{domain}/tenants/{id}/keys",
                "/v1/domains/{domain}/tenants/{id}/keys/{key_id}",
                "/v1/domains/{domain}/tenants/{id}/usage",
                "/v1/usage",
            ]
        );
        let link = &document["paths"]["/v1/domains/{domain}/tenants"]["post"]["responses"]["201"]["links"]
            ["get"];
        assert_eq!(link["operationId"], "get_tenant");
        assert_eq!(link["parameters"]["id"], "$response.body#/id");
        // Every operation says it may answer 408, in the error shape.
        let operations: Vec<&Value> = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .collect();
        assert_eq!(operations.len(), 14);
        for operation in operations {
            let late = &operation["responses"]["408"]["content"]["application/json"]["schema"];
            assert_eq!(
                late["$ref"], "#/components/schemas/ErrorBody",
                "{operation}"
            );
        }
    }
}
