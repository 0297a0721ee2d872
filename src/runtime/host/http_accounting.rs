//! Charges to the task's [`HostBudget`] for every `wasi:http/types` call
//! through which a guest makes the host store bytes it chose: header maps
//! built, extended or cloned, request strings (method, scheme, authority,
//! path), and the buffer behind each outgoing body.
//!
//! wasmtime-wasi-http implements these functions without a byte budget of
//! its own (only a per-map size limit, and the resource table counts
//! entries, not bytes), so after linking it we shadow exactly these
//! functions with wrappers that charge first and then call its
//! implementation. Everything else in `wasi:http` is linked as it comes.
//!
//! [`HostBudget`]: super::budget::HostBudget

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::p2::bindings::http::types::{
    HeaderError, HostFields, HostOutgoingRequest, HostOutgoingResponse, Method, Scheme,
};
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{
    HostOutgoingRequest as OutgoingRequest, HostOutgoingResponse as OutgoingResponse,
};
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use super::http::OUTGOING_BODY_BUFFER_BYTES;
use crate::runtime::store::TaskState;

/// The `wasi:http/types` instance wasmtime-wasi-http 48 links; guests that
/// import an older 0.2.x version are resolved to it by semver.
const TYPES_INTERFACE: &str = "wasi:http/types@0.2.12";

fn charge(
    store: &StoreContextMut<'_, TaskState>,
    bytes: usize,
    during: &'static str,
) -> wasmtime::Result<()> {
    store
        .data()
        .host_budget()
        .charge(bytes, during)
        .map_err(wasmtime::Error::new)
}

fn header_result<T>(
    result: Result<T, wasmtime_wasi_http::p2::HeaderError>,
) -> wasmtime::Result<Result<T, HeaderError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => Ok(Err(error.downcast()?)),
    }
}

fn map_bytes(map: &FieldMap) -> usize {
    map.iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

fn optional_len(text: &Option<String>) -> usize {
    text.as_ref().map_or(0, String::len)
}

/// Shadows the byte-storing `wasi:http/types` functions in `linker`, which
/// must already hold wasmtime-wasi-http's own.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES_INTERFACE)?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let bytes = entries.iter().map(|(n, v)| n.len() + v.len()).sum();
            charge(&store, bytes, "wasi:http fields")?;
            let mut http = store.data_mut().http();
            Ok((header_result(HostFields::from_list(&mut http, entries))?,))
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let bytes = name.len() + values.iter().map(Vec::len).sum::<usize>();
            charge(&store, bytes, "wasi:http fields")?;
            let mut http = store.data_mut().http();
            Ok((header_result(HostFields::set(
                &mut http, fields, name, values,
            ))?,))
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        |mut store, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            charge(&store, name.len() + value.len(), "wasi:http fields")?;
            let mut http = store.data_mut().http();
            Ok((header_result(HostFields::append(
                &mut http, fields, name, value,
            ))?,))
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        |mut store, (fields,): (Resource<FieldMap>,)| {
            let bytes = map_bytes(store.data_mut().http().table.get(&fields)?);
            charge(&store, bytes, "wasi:http fields clone")?;
            let mut http = store.data_mut().http();
            Ok((HostFields::clone(&mut http, fields)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store, (request, method): (Resource<OutgoingRequest>, Method)| {
            let bytes = match &method {
                Method::Other(name) => name.len(),
                _ => 0,
            };
            charge(&store, bytes, "wasi:http request method")?;
            let mut http = store.data_mut().http();
            Ok((HostOutgoingRequest::set_method(&mut http, request, method)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-scheme",
        |mut store, (request, scheme): (Resource<OutgoingRequest>, Option<Scheme>)| {
            let bytes = match &scheme {
                Some(Scheme::Other(name)) => name.len(),
                _ => 0,
            };
            charge(&store, bytes, "wasi:http request scheme")?;
            let mut http = store.data_mut().http();
            Ok((HostOutgoingRequest::set_scheme(&mut http, request, scheme)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store, (request, authority): (Resource<OutgoingRequest>, Option<String>)| {
            charge(
                &store,
                optional_len(&authority),
                "wasi:http request authority",
            )?;
            let mut http = store.data_mut().http();
            Ok((HostOutgoingRequest::set_authority(
                &mut http, request, authority,
            )?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-path-with-query",
        |mut store, (request, path): (Resource<OutgoingRequest>, Option<String>)| {
            charge(&store, optional_len(&path), "wasi:http request path")?;
            let mut http = store.data_mut().http();
            Ok((HostOutgoingRequest::set_path_with_query(
                &mut http, request, path,
            )?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.body",
        |mut store, (request,): (Resource<OutgoingRequest>,)| {
            charge(&store, OUTGOING_BODY_BUFFER_BYTES, "wasi:http request body")?;
            let mut http = store.data_mut().http();
            let body: Result<Resource<HostOutgoingBody>, ()> =
                HostOutgoingRequest::body(&mut http, request)?;
            Ok((body,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-response.body",
        |mut store, (response,): (Resource<OutgoingResponse>,)| {
            charge(
                &store,
                OUTGOING_BODY_BUFFER_BYTES,
                "wasi:http response body",
            )?;
            let mut http = store.data_mut().http();
            let body: Result<Resource<HostOutgoingBody>, ()> =
                HostOutgoingResponse::body(&mut http, response)?;
            Ok((body,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
