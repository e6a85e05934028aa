//! The vim25 SOAP wire format: request envelopes and a streaming response parser.
//!
//! Requests are small fixed templates with every value XML-escaped (a password
//! may hold `<&'"`). Responses are read with quick-xml's namespace-aware
//! streaming reader, never into a DOM: a 2,000-session list is about 1 MB.
//! Elements and attributes are matched by namespace and local name, never by
//! prefix, because servers pick their own prefixes (vcsim writes
//! `XMLSchema-instance:type` where vCenter writes `xsi:type`).
//!
//! Follows SOAP 1.1 (<https://www.w3.org/TR/2000/NOTE-SOAP-20000508/>) and the
//! vim25 API reference
//! (<https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/>):
//! `ServiceInstance.RetrieveServiceContent`/`CurrentTime`,
//! `SessionManager.Login`/`Logout`,
//! `PropertyCollector.RetrievePropertiesEx`/`ContinueRetrievePropertiesEx`,
//! and, for the VM map ([`super::updates`]), `ViewManager.CreateContainerView`,
//! `PropertyCollector.CreatePropertyCollector`/`CreateFilter`/`WaitForUpdatesEx`.
//!
//! This module is public only so the benchmark and tests can reach the parser;
//! the client in [`super::client`] is its one real user.

use std::fmt;

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::UserSession;

const SOAP_ENV_NS: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
const VIM25_NS: &[u8] = b"urn:vim25";
const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";

/// `RetrievePropertiesEx` pages longer than this are refused: a server that
/// keeps handing out tokens must not keep a cycle busy forever.
pub const MAX_PAGES: usize = 1000;

/// A reference to a managed object (`<_this type="SessionManager">SessionManager</_this>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

/// The parts of `ServiceContent` the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    pub session_manager: MoRef,
    pub property_collector: MoRef,
    /// The inventory's root folder: the container of the VM view. `None`
    /// when the vCenter did not send one (the VM map is then unavailable).
    pub root_folder: Option<MoRef>,
    /// Makes the `ContainerView` the VM map watches.
    pub view_manager: Option<MoRef>,
    /// `about.apiVersion`, e.g. `8.0.3.0`; sent back in `SOAPAction`.
    pub api_version: String,
}

/// A SOAP fault, or a `MethodFault` reported inside a `missingSet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Local name of the vim25 fault type (`InvalidLogin`, `NotAuthenticated`),
    /// or of the SOAP `faultcode` when the fault has no detail.
    pub fault: String,
    /// `faultstring` (or `localizedMessage`); often empty on vcsim.
    pub message: String,
}

impl Fault {
    pub fn is_not_authenticated(&self) -> bool {
        self.fault == "NotAuthenticated"
    }
}

/// What a successful HTTP exchange carried: the method's result or a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    Ok(T),
    Fault(Fault),
}

/// One page of a `sessionList` retrieval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPage {
    pub sessions: Vec<UserSession>,
    /// Present when more results wait for `ContinueRetrievePropertiesEx`.
    pub token: Option<String>,
    /// The first `missingSet` entry: the property could not be read (a
    /// `NotAuthenticated` here means the session is gone).
    pub missing: Option<Fault>,
}

/// The response was not the SOAP document we expect. The message names the
/// problem and its byte offset, never response content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// Requests

fn envelope(body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            "<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"
        ),
        body
    )
}

fn this(moref: &MoRef) -> String {
    format!(
        r#"<_this type="{}">{}</_this>"#,
        escape(moref.kind.as_str()),
        escape(moref.value.as_str())
    )
}

/// `RetrieveServiceContent` on the fixed `ServiceInstance` object.
pub fn retrieve_service_content() -> String {
    envelope(
        r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#,
    )
}

/// `Login`. The result holds the password: send it, never log it.
pub fn login(session_manager: &MoRef, user: &str, password: &str) -> String {
    envelope(&format!(
        r#"<Login xmlns="urn:vim25">{}<userName>{}</userName><password>{}</password></Login>"#,
        this(session_manager),
        escape(user),
        escape(password)
    ))
}

/// `RetrievePropertiesEx` of `SessionManager.sessionList`.
pub fn retrieve_session_list(property_collector: &MoRef, session_manager: &MoRef) -> String {
    envelope(&format!(
        concat!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25">{}<specSet><propSet><type>SessionManager</type>"#,
            "<all>false</all><pathSet>sessionList</pathSet></propSet>",
            r#"<objectSet><obj type="{}">{}</obj><skip>false</skip></objectSet></specSet>"#,
            "<options></options></RetrievePropertiesEx>"
        ),
        this(property_collector),
        escape(session_manager.kind.as_str()),
        escape(session_manager.value.as_str())
    ))
}

/// `ContinueRetrievePropertiesEx` with the token of the previous page.
pub fn continue_retrieve(property_collector: &MoRef, token: &str) -> String {
    envelope(&format!(
        r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25">{}<token>{}</token></ContinueRetrievePropertiesEx>"#,
        this(property_collector),
        escape(token)
    ))
}

/// `CurrentTime`: the vCenter's clock, against which session times are read.
pub fn current_time() -> String {
    envelope(
        r#"<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>"#,
    )
}

/// `CreatePropertyCollector`: a collector of the session's own, so the VM
/// map's filter and update versions are never shared with anything else.
pub fn create_property_collector(property_collector: &MoRef) -> String {
    envelope(&format!(
        r#"<CreatePropertyCollector xmlns="urn:vim25">{}</CreatePropertyCollector>"#,
        this(property_collector)
    ))
}

/// `CreateContainerView` of every `VirtualMachine` below `container`.
pub fn create_vm_view(view_manager: &MoRef, container: &MoRef) -> String {
    envelope(&format!(
        concat!(
            r#"<CreateContainerView xmlns="urn:vim25">{}<container type="{}">{}</container>"#,
            "<type>VirtualMachine</type><recursive>true</recursive></CreateContainerView>"
        ),
        this(view_manager),
        escape(container.kind.as_str()),
        escape(container.value.as_str())
    ))
}

/// The VM properties the map keeps: the name and both guest IP properties.
/// `guest.net` cannot be narrowed to its `ipAddress` fields (property paths
/// do not index arrays), so the whole NIC list travels when it changes.
pub const VM_PROPERTIES: [&str; 3] = ["name", "guest.ipAddress", "guest.net"];

/// `CreateFilter` over the VMs of `view` (a `ContainerView`), reporting
/// [`VM_PROPERTIES`]; `partialUpdates` false so a change carries the whole
/// new value of each property.
pub fn create_vm_filter(property_collector: &MoRef, view: &MoRef) -> String {
    let paths: String = VM_PROPERTIES
        .iter()
        .map(|p| format!("<pathSet>{p}</pathSet>"))
        .collect();
    envelope(&format!(
        concat!(
            r#"<CreateFilter xmlns="urn:vim25">{}<spec><propSet><type>VirtualMachine</type><all>false</all>{}</propSet>"#,
            r#"<objectSet><obj type="{}">{}</obj><skip>true</skip>"#,
            r#"<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet>"#,
            "</objectSet></spec><partialUpdates>false</partialUpdates></CreateFilter>"
        ),
        this(property_collector),
        paths,
        escape(view.kind.as_str()),
        escape(view.value.as_str())
    ))
}

/// `WaitForUpdatesEx` that never waits (`maxWaitSeconds` 0): what changed
/// since `version` (everything when `None`), at most about
/// `max_object_updates` objects per answer.
pub fn wait_for_updates(
    property_collector: &MoRef,
    version: Option<&str>,
    max_object_updates: u32,
) -> String {
    let version = version
        .map(|v| format!("<version>{}</version>", escape(v)))
        .unwrap_or_default();
    envelope(&format!(
        concat!(
            r#"<WaitForUpdatesEx xmlns="urn:vim25">{}{}<options><maxWaitSeconds>0</maxWaitSeconds>"#,
            "<maxObjectUpdates>{}</maxObjectUpdates></options></WaitForUpdatesEx>"
        ),
        this(property_collector),
        version,
        max_object_updates
    ))
}

/// A method that takes only `_this` and returns nothing
/// (`DestroyPropertyCollector`, `DestroyView`).
pub fn destroy(method: &str, object: &MoRef) -> String {
    envelope(&format!(
        r#"<{method} xmlns="urn:vim25">{}</{method}>"#,
        this(object)
    ))
}

/// `Logout` of the session named by the request's cookie.
pub fn logout(session_manager: &MoRef) -> String {
    envelope(&format!(
        r#"<Logout xmlns="urn:vim25">{}</Logout>"#,
        this(session_manager)
    ))
}

// ---------------------------------------------------------------------------
// Responses

/// Parses a `RetrieveServiceContent` response.
pub fn parse_service_content(xml: &[u8]) -> Result<Reply<ServiceContent>, ParseError> {
    let doc = Document::parse(xml, "RetrieveServiceContentResponse")?;
    doc.reply(|doc| {
        let (Some(sm), Some(pc)) = (doc.session_manager, doc.property_collector) else {
            return Err(ParseError(
                "service content lacks sessionManager or propertyCollector".into(),
            ));
        };
        Ok(ServiceContent {
            session_manager: sm,
            property_collector: pc,
            root_folder: doc.root_folder,
            view_manager: doc.view_manager,
            api_version: doc.api_version.unwrap_or_default(),
        })
    })
}

/// Parses a `Login` response: the new session's key, when sent (the
/// reporter tells its own session from a lost one by it).
pub fn parse_login(xml: &[u8]) -> Result<Reply<Option<String>>, ParseError> {
    Document::parse(xml, "LoginResponse")?.reply(|doc| Ok(doc.login_key))
}

/// `TerminateSession` of the sessions with these keys.
pub fn terminate_session(session_manager: &MoRef, key: &str) -> String {
    envelope(&format!(
        r#"<TerminateSession xmlns="urn:vim25">{}<sessionId>{}</sessionId></TerminateSession>"#,
        this(session_manager),
        escape(key)
    ))
}

/// Parses a `CurrentTime` response: the vCenter's time as sent (ISO 8601).
pub fn parse_current_time(xml: &[u8]) -> Result<Reply<String>, ParseError> {
    Document::parse(xml, "CurrentTimeResponse")?.reply(|doc| {
        doc.returnval
            .map(|r| r.value)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ParseError("CurrentTime returned no time".into()))
    })
}

/// Parses the response of a method returning one managed object reference
/// (`CreateContainerView`, `CreatePropertyCollector`, `CreateFilter`):
/// `response` names its response element.
pub fn parse_moref(xml: &[u8], response: &str) -> Result<Reply<MoRef>, ParseError> {
    Document::parse(xml, response)?.reply(|doc| {
        doc.returnval
            .filter(|r| !r.value.is_empty() && !r.kind.is_empty())
            .ok_or_else(|| ParseError(format!("{response} returned no object reference")))
    })
}

/// Parses the empty response of a method returning nothing; `response`
/// names its element (`DestroyViewResponse`).
pub fn parse_empty(xml: &[u8], response: &str) -> Result<Reply<()>, ParseError> {
    Document::parse(xml, response)?.reply(|_| Ok(()))
}

/// Parses a `Logout` response.
pub fn parse_logout(xml: &[u8]) -> Result<Reply<()>, ParseError> {
    Document::parse(xml, "LogoutResponse")?.reply(|_| Ok(()))
}

/// Parses a `RetrievePropertiesEx` (or, with `continued`,
/// `ContinueRetrievePropertiesEx`) response for `sessionList`. An empty
/// response (no `returnval`) is an empty page.
pub fn parse_session_page(xml: &[u8], continued: bool) -> Result<Reply<SessionPage>, ParseError> {
    let response = if continued {
        "ContinueRetrievePropertiesExResponse"
    } else {
        "RetrievePropertiesExResponse"
    };
    Document::parse(xml, response)?.reply(|doc| Ok(doc.page))
}

/// The SOAP fault of a response, if it is a well-formed SOAP envelope holding
/// one (used for HTTP 500 bodies, which may be anything).
pub fn parse_fault(xml: &[u8]) -> Option<Fault> {
    Document::parse(xml, "").ok()?.fault
}

/// Everything of interest gathered in one pass over a response.
#[derive(Default)]
struct Document {
    /// The `<Method>Response` element was seen.
    response_seen: bool,
    fault: Option<Fault>,
    session_manager: Option<MoRef>,
    property_collector: Option<MoRef>,
    root_folder: Option<MoRef>,
    view_manager: Option<MoRef>,
    api_version: Option<String>,
    /// `returnval/key` of a `LoginResponse`.
    login_key: Option<String>,
    /// Text of a `returnval` leaf (`CurrentTime`) and its `type`
    /// attribute (methods returning a managed object reference).
    returnval: Option<MoRef>,
    page: SessionPage,
}

impl Document {
    fn reply<T>(
        self,
        ok: impl FnOnce(Self) -> Result<T, ParseError>,
    ) -> Result<Reply<T>, ParseError> {
        if let Some(fault) = self.fault {
            return Ok(Reply::Fault(fault));
        }
        if !self.response_seen {
            return Err(ParseError(
                "the SOAP body holds neither the expected response nor a fault".into(),
            ));
        }
        ok(self).map(Reply::Ok)
    }

    fn parse(xml: &[u8], response: &str) -> Result<Document, ParseError> {
        let mut doc = Document::default();
        let mut parser = Parser::new(xml);
        // Partial state while inside a fault or a session.
        let mut fault: Option<Fault> = None;
        let mut fault_code = String::new();
        let mut session: Option<UserSession> = None;
        let mut missing: Option<Fault> = None;
        let mut missing_path = String::new();

        while let Some(step) = parser.next()? {
            match step {
                Step::Open {
                    xsi_type,
                    type_attr,
                } => {
                    let path = &parser.path;
                    let Some(body) = body_path(path) else {
                        continue;
                    };
                    // Fault: Body/soapenv:Fault, detail/<XFault xsi:type="X">.
                    if matches_fault(body, &[]) {
                        fault = Some(Fault {
                            fault: String::new(),
                            message: String::new(),
                        });
                    } else if matches_fault(body, &["detail", "*"])
                        && let Some(f) = fault.as_mut().filter(|f| f.fault.is_empty())
                    {
                        // Prefer xsi:type; else the element name (`InvalidLoginFault`).
                        let local = &body[2].local;
                        f.fault = xsi_type.clone().unwrap_or_else(|| {
                            local.strip_suffix("Fault").unwrap_or(local).to_string()
                        });
                    }
                    let Some(rel) = response_path(body, response) else {
                        continue;
                    };
                    match rel.as_slice() {
                        [] => doc.response_seen = true,
                        ["returnval", "objects", "propSet", "val", "UserSession"] => {
                            session = Some(UserSession::default());
                        }
                        ["returnval", "objects", "missingSet"] => {
                            missing = Some(Fault {
                                fault: String::new(),
                                message: String::new(),
                            });
                            missing_path.clear();
                        }
                        ["returnval", "objects", "missingSet", "fault", "fault"] => {
                            if let Some(m) = missing.as_mut() {
                                m.fault = xsi_type.unwrap_or_else(|| "MethodFault".to_string());
                            }
                        }
                        ["returnval", "sessionManager"] => {
                            doc.session_manager = Some(MoRef {
                                kind: type_attr.unwrap_or_else(|| "SessionManager".into()),
                                value: String::new(),
                            });
                        }
                        ["returnval", "propertyCollector"] => {
                            doc.property_collector = Some(MoRef {
                                kind: type_attr.unwrap_or_else(|| "PropertyCollector".into()),
                                value: String::new(),
                            });
                        }
                        ["returnval", "rootFolder"] => {
                            doc.root_folder = Some(MoRef {
                                kind: type_attr.unwrap_or_else(|| "Folder".into()),
                                value: String::new(),
                            });
                        }
                        ["returnval", "viewManager"] => {
                            doc.view_manager = Some(MoRef {
                                kind: type_attr.unwrap_or_else(|| "ViewManager".into()),
                                value: String::new(),
                            });
                        }
                        ["returnval"] => {
                            doc.returnval = Some(MoRef {
                                kind: type_attr.unwrap_or_default(),
                                value: String::new(),
                            });
                        }
                        _ => {}
                    }
                }
                Step::Close => {
                    let text = parser.text.as_str();
                    let path = &parser.path;
                    let Some(body) = body_path(path) else {
                        continue;
                    };
                    if matches_fault(body, &[]) {
                        if let Some(mut f) = fault.take() {
                            if f.fault.is_empty() {
                                // No detail: fall back to the faultcode's local part.
                                f.fault = local_part(&fault_code).to_string();
                            }
                            doc.fault.get_or_insert(f);
                        }
                    } else if matches_fault(body, &["faultstring"]) {
                        if let Some(f) = fault.as_mut() {
                            f.message = text.trim().to_string();
                        }
                    } else if matches_fault(body, &["faultcode"]) {
                        fault_code = text.trim().to_string();
                    }
                    let Some(rel) = response_path(body, response) else {
                        continue;
                    };
                    match rel.as_slice() {
                        ["returnval", "objects", "propSet", "val", "UserSession"] => {
                            if let Some(s) = session.take() {
                                doc.page.sessions.push(s);
                            }
                        }
                        [
                            "returnval",
                            "objects",
                            "propSet",
                            "val",
                            "UserSession",
                            field,
                        ] => {
                            if let Some(s) = session.as_mut() {
                                set_session_field(s, field, text)?;
                            }
                        }
                        ["returnval", "objects", "missingSet"] => {
                            if let Some(mut m) = missing.take()
                                && doc.page.missing.is_none()
                            {
                                if m.message.is_empty() {
                                    m.message = format!("property {missing_path} is missing");
                                }
                                doc.page.missing = Some(m);
                            }
                        }
                        ["returnval", "objects", "missingSet", "path"] => {
                            missing_path = text.trim().to_string();
                        }
                        [
                            "returnval",
                            "objects",
                            "missingSet",
                            "fault",
                            "localizedMessage",
                        ] => {
                            if let Some(m) = missing.as_mut() {
                                m.message = text.trim().to_string();
                            }
                        }
                        ["returnval", "key"] => {
                            let key = text.trim();
                            if !key.is_empty() {
                                doc.login_key = Some(key.to_string());
                            }
                        }
                        ["returnval", "token"] => {
                            let token = text.trim();
                            if !token.is_empty() {
                                doc.page.token = Some(token.to_string());
                            }
                        }
                        ["returnval", "sessionManager"] => {
                            if let Some(m) = doc.session_manager.as_mut() {
                                m.value = text.trim().to_string();
                            }
                        }
                        ["returnval", "propertyCollector"] => {
                            if let Some(m) = doc.property_collector.as_mut() {
                                m.value = text.trim().to_string();
                            }
                        }
                        ["returnval", "rootFolder"] => {
                            if let Some(m) = doc.root_folder.as_mut() {
                                m.value = text.trim().to_string();
                            }
                        }
                        ["returnval", "viewManager"] => {
                            if let Some(m) = doc.view_manager.as_mut() {
                                m.value = text.trim().to_string();
                            }
                        }
                        ["returnval"] => {
                            if let Some(m) = doc.returnval.as_mut() {
                                m.value = text.trim().to_string();
                            }
                        }
                        ["returnval", "about", "apiVersion"] => {
                            doc.api_version = Some(text.trim().to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
        if !parser.saw_envelope {
            return Err(ParseError("the document is not a SOAP 1.1 envelope".into()));
        }
        Ok(doc)
    }
}

fn set_session_field(s: &mut UserSession, field: &str, text: &str) -> Result<(), ParseError> {
    let value = || text.trim().to_string();
    match field {
        "key" => s.key = value(),
        "userName" => s.user_name = value(),
        "fullName" => s.full_name = value(),
        "loginTime" => s.login_time = value(),
        "lastActiveTime" => s.last_active_time = value(),
        "ipAddress" => s.ip_address = value(),
        "userAgent" => s.user_agent = value(),
        "extensionSession" => s.extension_session = text.trim() == "true",
        "callCount" => {
            s.call_count = text
                .trim()
                .parse()
                .map_err(|_| ParseError("UserSession callCount is not an integer".into()))?;
        }
        // locale, messageLocale and future fields.
        _ => {}
    }
    Ok(())
}

/// The local part of a QName value such as `soapenv:Server` or `xsd:string`.
fn local_part(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, local)| local)
}

/// Which namespace an element is in, as far as this parser cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ns {
    SoapEnv,
    Vim25,
    /// No namespace (SOAP's `faultcode`, `faultstring`, `detail`).
    None,
    Other,
}

pub(super) struct Elem {
    pub(super) ns: Ns,
    pub(super) local: String,
}

/// The path below `soapenv:Envelope/soapenv:Body`, if `path` is inside it.
pub(super) fn body_path(path: &[Elem]) -> Option<&[Elem]> {
    match path {
        [env, body, rest @ ..]
            if env.ns == Ns::SoapEnv
                && env.local == "Envelope"
                && body.ns == Ns::SoapEnv
                && body.local == "Body" =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// Whether `body` is `soapenv:Fault` followed by unqualified `rest` (`*` matches any name).
pub(super) fn matches_fault(body: &[Elem], rest: &[&str]) -> bool {
    let Some((fault, tail)) = body.split_first() else {
        return false;
    };
    fault.ns == Ns::SoapEnv
        && fault.local == "Fault"
        && tail.len() == rest.len()
        && tail.iter().zip(rest).enumerate().all(|(i, (e, want))| {
            // The detail's child carries the vim25 namespace; the rest are unqualified.
            (*want == "*" || e.local == *want) && (i > 0 || e.ns == Ns::None || e.ns == Ns::Vim25)
        })
}

/// Local names below the vim25 `<response>` element, if `body` is inside it.
/// Children are matched in vim25 or no namespace: they inherit the default
/// namespace on real servers but are unqualified when a prefix is used.
pub(super) fn response_path<'a>(body: &'a [Elem], response: &str) -> Option<RelPath<'a>> {
    let (first, rest) = body.split_first()?;
    if response.is_empty() || first.ns != Ns::Vim25 || first.local != response {
        return None;
    }
    // Nothing of interest lies deeper than this below the response (a
    // guest NIC's address in an update set is seven levels down).
    if rest.len() > MAX_DEPTH || rest.iter().any(|e| e.ns != Ns::Vim25 && e.ns != Ns::None) {
        return None;
    }
    let mut names = [""; MAX_DEPTH];
    for (name, e) in names.iter_mut().zip(rest) {
        *name = e.local.as_str();
    }
    Some(RelPath {
        names,
        len: rest.len(),
    })
}

/// Deepest path below a response element that any parser looks at.
const MAX_DEPTH: usize = 8;

/// Local names below the response element, without allocating per event.
pub(super) struct RelPath<'a> {
    names: [&'a str; MAX_DEPTH],
    len: usize,
}

impl<'a> RelPath<'a> {
    pub(super) fn as_slice(&self) -> &[&'a str] {
        &self.names[..self.len]
    }
}

pub(super) enum Step {
    /// An element opened; `Parser::path` ends with it.
    Open {
        /// Local part of its `xsi:type` attribute (any prefix bound to the XSI namespace).
        xsi_type: Option<String>,
        /// Its unqualified `type` attribute (managed object references).
        type_attr: Option<String>,
    },
    /// An element closed; `Parser::path` still ends with it and
    /// `Parser::text` holds the text since the last open (a leaf's content).
    Close,
}

/// A thin layer over quick-xml's `NsReader` keeping the path of open
/// elements (resolved names) and the current text.
pub(super) struct Parser<'x> {
    reader: NsReader<&'x [u8]>,
    /// Open elements, outermost first.
    pub(super) path: Vec<Elem>,
    /// Names of elements closed earlier, kept to reuse their allocation.
    spare: Vec<String>,
    pub(super) text: String,
    /// The last step was a `Close`: pop its element before reading on.
    pop_pending: bool,
    pub(super) saw_envelope: bool,
}

impl<'x> Parser<'x> {
    pub(super) fn new(xml: &'x [u8]) -> Self {
        let mut reader = NsReader::from_reader(xml);
        let config = reader.config_mut();
        config.expand_empty_elements = true;
        config.check_end_names = true;
        Parser {
            reader,
            path: Vec::with_capacity(16),
            spare: Vec::with_capacity(16),
            text: String::new(),
            pop_pending: false,
            saw_envelope: false,
        }
    }

    pub(super) fn error(&self, what: impl fmt::Display) -> ParseError {
        ParseError(format!(
            "{what} (at byte {})",
            self.reader.buffer_position()
        ))
    }

    pub(super) fn next(&mut self) -> Result<Option<Step>, ParseError> {
        if self.pop_pending {
            self.pop_pending = false;
            if let Some(elem) = self.path.pop() {
                self.spare.push(elem.local);
            }
            self.text.clear();
        }
        loop {
            let (ns, event) = match self.reader.read_resolved_event() {
                Ok((ns, event)) => (classify(&ns), event),
                Err(e) => return Err(self.error(e)),
            };
            match event {
                Event::Start(start) => {
                    let name = std::str::from_utf8(start.local_name().into_inner())
                        .map_err(|_| self.error("element name is not UTF-8"))?;
                    let mut local = self.spare.pop().unwrap_or_default();
                    local.clear();
                    local.push_str(name);
                    if self.path.is_empty() {
                        if ns != Ns::SoapEnv || local != "Envelope" {
                            return Err(self.error("the document is not a SOAP 1.1 envelope"));
                        }
                        self.saw_envelope = true;
                    }
                    let mut xsi_type = None;
                    let mut type_attr = None;
                    for attr in start.attributes() {
                        let attr = attr.map_err(|e| self.error(e))?;
                        let (attr_ns, attr_local) = self.reader.resolve_attribute(attr.key);
                        if attr_local.as_ref() != b"type" {
                            continue;
                        }
                        let value = attr
                            .unescape_value()
                            .map_err(|e| self.error(e))?
                            .into_owned();
                        match attr_ns {
                            ResolveResult::Bound(n) if n.as_ref() == XSI_NS => {
                                xsi_type = Some(local_part(&value).to_string());
                            }
                            ResolveResult::Unbound => type_attr = Some(value),
                            _ => {}
                        }
                    }
                    self.path.push(Elem { ns, local });
                    self.text.clear();
                    return Ok(Some(Step::Open {
                        xsi_type,
                        type_attr,
                    }));
                }
                Event::End(_) => {
                    self.pop_pending = true;
                    return Ok(Some(Step::Close));
                }
                Event::Text(text) => {
                    let text = text.xml10_content().map_err(|e| self.error(e))?;
                    self.text.push_str(&text);
                }
                Event::CData(data) => {
                    let data = data.decode().map_err(|e| self.error(e))?;
                    self.text.push_str(&data);
                }
                Event::GeneralRef(reference) => {
                    if let Some(ch) = reference.resolve_char_ref().map_err(|e| self.error(e))? {
                        self.text.push(ch);
                    } else {
                        let name = reference.decode().map_err(|e| self.error(e))?;
                        let value = resolve_predefined_entity(&name)
                            .ok_or_else(|| self.error("unknown entity reference"))?;
                        self.text.push_str(value);
                    }
                }
                Event::Eof => {
                    if !self.path.is_empty() {
                        return Err(self.error("the document ends inside an element"));
                    }
                    return Ok(None);
                }
                // Declarations, comments, processing instructions, DOCTYPE.
                _ => {}
            }
        }
    }
}

fn classify(ns: &ResolveResult<'_>) -> Ns {
    match ns {
        ResolveResult::Bound(n) if n.as_ref() == SOAP_ENV_NS => Ns::SoapEnv,
        ResolveResult::Bound(n) if n.as_ref() == VIM25_NS => Ns::Vim25,
        ResolveResult::Unbound => Ns::None,
        _ => Ns::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/soap/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path} is readable: {e}"))
    }

    fn ok<T: fmt::Debug>(reply: Result<Reply<T>, ParseError>) -> T {
        match reply {
            Ok(Reply::Ok(value)) => value,
            other => panic!("expected a result, got {other:?}"),
        }
    }

    #[test]
    fn a_session_page_with_a_token_yields_every_field_and_the_token() {
        let page = ok(parse_session_page(
            &fixture("retrieve_sessions_token.xml"),
            false,
        ));
        assert_eq!(page.token.as_deref(), Some("session-page-2"));
        assert_eq!(page.missing, None);
        assert_eq!(page.sessions.len(), 3);
        assert_eq!(
            page.sessions[0],
            UserSession {
                key: "52a9f1c2-3b4d-8e7f-1a2b-3c4d5e6f7a8b".into(),
                user_name: r"VSPHERE.LOCAL\ci-user-1".into(),
                full_name: "ci-user-1".into(),
                login_time: "2026-11-25T08:01:02.123456Z".into(),
                last_active_time: "2026-11-25T09:40:11.654321Z".into(),
                ip_address: "10.0.0.15".into(),
                user_agent: "openshift-install/4.16.0 govmomi/0.34.2 (go1.21.9; linux; amd64)"
                    .into(),
                call_count: 1431,
                extension_session: false,
            }
        );
    }

    #[test]
    fn a_session_without_user_agent_has_an_empty_one() {
        let page = ok(parse_session_page(
            &fixture("retrieve_sessions_token.xml"),
            false,
        ));
        assert_eq!(page.sessions[1].user_name, "ci-user-2@vsphere.local");
        assert_eq!(page.sessions[1].user_agent, "");
    }

    #[test]
    fn escaped_text_and_indented_fields_are_decoded() {
        let page = ok(parse_session_page(
            &fixture("retrieve_sessions_token.xml"),
            false,
        ));
        let s = &page.sessions[2];
        assert_eq!(s.user_agent, r#"Terraform/1.5.7 & "vsphere" <2.6>"#);
        assert_eq!(s.call_count, 98_765_432_101);
        assert_eq!(s.key, "52deadbe-efde-adbe-efde-adbeefdeadbe");
    }

    #[test]
    fn a_continued_page_is_read_from_its_own_response_element() {
        let xml = fixture("continue_sessions.xml");
        let page = ok(parse_session_page(&xml, true));
        assert_eq!(page.token, None);
        assert_eq!(page.sessions.len(), 1);
        assert_eq!(page.sessions[0].user_agent, "ccoctl");
        // The same document is not a first-page response.
        assert!(parse_session_page(&xml, false).is_err());
    }

    #[test]
    fn missing_set_not_authenticated_is_reported_as_such() {
        let page = ok(parse_session_page(
            &fixture("missing_set_not_authenticated.xml"),
            false,
        ));
        assert!(page.sessions.is_empty());
        let missing = page.missing.expect("the missingSet is reported");
        assert!(missing.is_not_authenticated(), "{missing:?}");
    }

    #[test]
    fn fault_type_is_found_by_xsi_namespace_whatever_the_prefix() {
        let reply = parse_login(&fixture("fault_unusual_prefix.xml")).expect("well-formed");
        assert_eq!(
            reply,
            Reply::Fault(Fault {
                fault: "InvalidLogin".into(),
                message: "Cannot complete login due to an incorrect user name or password.".into(),
            })
        );
    }

    #[test]
    fn a_not_authenticated_fault_is_recognised() {
        let fault = parse_fault(&fixture("not_authenticated_fault.xml")).expect("a fault");
        assert!(fault.is_not_authenticated());
        assert_eq!(fault.message, "The session is not authenticated.");
    }

    #[test]
    fn a_fault_without_detail_is_named_after_its_faultcode() {
        let xml = br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultcode>e:Client</faultcode><faultstring>bad</faultstring></e:Fault></e:Body></e:Envelope>"#;
        assert_eq!(
            parse_fault(xml),
            Some(Fault {
                fault: "Client".into(),
                message: "bad".into()
            })
        );
    }

    #[test]
    fn service_content_gives_the_managers_and_api_version() {
        let content = ok(parse_service_content(&fixture("service_content.xml")));
        assert_eq!(
            content,
            ServiceContent {
                session_manager: MoRef {
                    kind: "SessionManager".into(),
                    value: "SessionManager".into()
                },
                property_collector: MoRef {
                    kind: "PropertyCollector".into(),
                    value: "propertyCollector".into()
                },
                root_folder: Some(MoRef {
                    kind: "Folder".into(),
                    value: "group-d1".into()
                }),
                view_manager: Some(MoRef {
                    kind: "ViewManager".into(),
                    value: "ViewManager".into()
                }),
                api_version: "8.0.3.0".into(),
            }
        );
    }

    #[test]
    fn login_response_is_accepted() {
        assert_eq!(
            parse_login(&fixture("login.xml")),
            Ok(Reply::Ok(Some(
                "52aa0000-1111-2222-3333-444455556666".into()
            )))
        );
    }

    #[test]
    fn elements_in_a_foreign_namespace_are_not_taken_for_vim25_ones() {
        let xml = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><LoginResponse xmlns="urn:other"/></soapenv:Body></soapenv:Envelope>"#;
        assert!(parse_login(xml).is_err());
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"not xml at all",
            b"<html><body>503 Service Unavailable</body></html>",
            b"<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>",
            b"<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"></soapenv:Body>",
            b"<a:Envelope xmlns:a=\"http://schemas.xmlsoap.org/soap/envelope/\"><a:Body>&bogus;</a:Body></a:Envelope>",
            b"\xff\xfe<\x00",
        ];
        for xml in cases {
            assert!(
                parse_session_page(xml, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(xml)
            );
            assert_eq!(parse_fault(xml), None);
        }
        let bad_count = String::from_utf8(fixture("continue_sessions.xml"))
            .expect("fixture is UTF-8")
            .replace("<callCount>3<", "<callCount>three<");
        let err = parse_session_page(bad_count.as_bytes(), true).expect_err("bad callCount");
        assert!(err.0.contains("callCount"), "{err}");
    }

    #[test]
    fn every_truncation_of_a_response_is_an_error_not_a_shorter_page() {
        let xml = fixture("retrieve_sessions_token.xml");
        let full = parse_session_page(&xml, false).expect("the whole page parses");
        // Only whitespace may follow the root element: cutting some of it off
        // leaves the whole document, which must parse exactly as before.
        // Every shorter cut loses part of the document and must be an error,
        // never `Ok` with fewer sessions.
        let trimmed = xml.trim_ascii_end().len();
        for end in 0..xml.len() {
            let cut = parse_session_page(&xml[..end], false);
            if end < trimmed {
                assert!(
                    cut.is_err(),
                    "a page cut at byte {end} of {trimmed} parsed: {cut:?}"
                );
            } else {
                assert_eq!(cut.as_ref(), Ok(&full), "cut at byte {end}");
            }
            // Only that it does not panic: a cut page holds no fault.
            let _ = parse_fault(&xml[..end]);
        }
    }

    #[test]
    fn request_values_are_escaped() {
        let sm = MoRef {
            kind: "SessionManager".into(),
            value: "SessionManager".into(),
        };
        let body = login(&sm, "a&b", r#"p<&'">"#);
        assert!(body.contains("<userName>a&amp;b</userName>"), "{body}");
        assert!(
            body.contains("<password>p&lt;&amp;&apos;&quot;&gt;</password>"),
            "password element is escaped"
        );
    }
}
