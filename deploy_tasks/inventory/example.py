"""The example inventory: 34 components of a Zope-based product on 6 Windows hosts.

``inv init-inventory --example`` writes it; ``inventory/example.xlsx`` and
``inventory/example.xls`` are produced from here and committed. The addresses
are loopback ones so that the rehearsal fleet (emulated Windows hosts, one per
127.0.0.x address) can stand in for the hosts.
"""

from __future__ import annotations

SETTINGS = [
    ("environment", "production"),
    ("domain", "example.test"),
    ("package_port", 8080),
    ("puppet_agent_msi_name", "puppet-agent-7.23.0-x64.msi"),
    ("puppet_agent_version", "7.23.0"),
    ("winrm_transport", "ntlm"),
    ("winrm_scheme", "https"),
    ("winrm_cert_validation", "validate"),
    ("max_parallel", 10),
    ("command_timeout_s", 1800),
    ("retries", 2),
]

# Hostname, Address, OS, Roles, WinRM Port, Notes
SERVERS = [
    ("deploy01", "local", "linux", "puppet-master, package-server", None, "controller, nginx package server and Puppet master"),
    ("ZDB01", "127.0.0.11", "windows", "db, zeo", None, "ZODB storage and ZEO"),
    ("ZAPP01", "127.0.0.12", "windows", "app", None, "Zope instances 1 and 2"),
    ("ZAPP02", "127.0.0.13", "windows", "app", None, "Zope instances 3 and 4"),
    ("ZSRCH01", "127.0.0.14", "windows", "search", None, "search engine and indexer"),
    ("ZSVC01", "127.0.0.15", "windows", "mail, ldap, reporting", None, "back-office services"),
    ("ZWEB01", "127.0.0.16", "windows", "web, proxy", None, "front end and load balancer"),
]

# Component, Version, Depends On, Description   (Artifact is <name>-<version>.zip)
_COMPONENTS = [
    ("python_runtime", "2.7.18", "", "Python runtime the Zope processes use"),
    ("zodb_storage", "5.8.1", "", "ZODB FileStorage data volume"),
    ("blob_storage", "5.8.1", "", "ZODB blob storage volume"),
    ("ldap_directory", "2.4.59", "", "LDAP directory for users and groups"),
    ("mail_relay", "3.7.0", "", "SMTP relay"),
    ("log_shipper", "1.10", "", "log forwarding agent"),
    ("license_service", "4.0.2", "", "product license server"),
    ("static_assets", "12.4.0", "", "static files served by the front end"),
    ("zeo_server", "5.4.0", "zodb_storage, blob_storage, python_runtime", "ZEO storage server"),
    ("search_engine", "8.11.2", "python_runtime", "full-text search engine"),
    ("auth_ldap", "3.1.0", "ldap_directory, python_runtime", "LDAP authentication plug-in"),
    ("smtp_gateway", "2.2.4", "mail_relay, python_runtime", "outgoing mail gateway"),
    ("monitoring_agent", "6.5.1", "log_shipper", "metrics and health agent"),
    ("zope_base", "4.8.11", "python_runtime, license_service", "Zope application server software"),
    ("catalog", "4.8.11", "zeo_server, zope_base", "ZCatalog indexes"),
    ("zope_instance_1", "4.8.11", "zeo_server, zope_base, auth_ldap", "Zope instance 1"),
    ("zope_instance_2", "4.8.11", "zeo_server, zope_base, auth_ldap", "Zope instance 2"),
    ("zope_instance_3", "4.8.11", "zeo_server, zope_base, auth_ldap", "Zope instance 3"),
    ("zope_instance_4", "4.8.11", "zeo_server, zope_base, auth_ldap", "Zope instance 4"),
    ("search_indexer", "8.11.2", "search_engine, zeo_server", "feeds content changes to the search engine"),
    ("mail_queue", "2.2.4", "smtp_gateway, zeo_server", "persistent outgoing mail queue"),
    ("session_store", "1.6.0", "zeo_server", "shared session storage"),
    ("reporting_db", "10.3.0", "zeo_server, python_runtime", "reporting database"),
    ("workflow_engine", "3.0.5", "catalog, zope_base", "content workflow engine"),
    ("reporting", "10.3.0", "reporting_db, catalog", "reports and exports"),
    ("search_ui", "8.11.2", "search_indexer, zope_instance_1", "search pages"),
    ("load_balancer", "2.8.3", "zope_instance_1, zope_instance_2, zope_instance_3, zope_instance_4", "balances requests over the Zope instances"),
    ("notifications", "1.4.0", "mail_queue, workflow_engine", "e-mail notifications of workflow events"),
    ("web_frontend", "1.22.1", "load_balancer, static_assets", "public web front end"),
    ("scheduler", "2.0.1", "workflow_engine, session_store", "scheduled jobs"),
    ("audit_trail", "1.2.0", "workflow_engine, log_shipper", "audit log of changes"),
    ("admin_console", "4.8.11", "web_frontend, auth_ldap", "administration console"),
    ("api_gateway", "1.9.0", "web_frontend, auth_ldap", "REST API gateway"),
    ("health_dashboard", "0.9.7", "monitoring_agent, web_frontend, reporting", "operations dashboard"),
]

# Health checks the rehearsal fleet can pass: the product module keeps each component's Windows service
# Product_<component> running (puppet/modules/product), and the emulated apply records it, so `sc query`
# answers RUNNING; parameters.json is a file the module writes. No port: the emulated services listen nowhere.
_HEALTH = {
    "zeo_server": "service:Product_zeo_server",
    "zope_instance_1": "service:Product_zope_instance_1",
    "zope_instance_2": "service:Product_zope_instance_2",
    "zope_instance_3": "service:Product_zope_instance_3",
    "zope_instance_4": "service:Product_zope_instance_4",
    "search_engine": "service:Product_search_engine",
    "web_frontend": "service:Product_web_frontend",
    "api_gateway": "cmd:type C:\\Product\\api_gateway\\etc\\parameters.json",
}

# Component, Version, Artifact, Depends On, Puppet Class, Timeout (s), Health Check, Description
COMPONENTS = [
    (name, version, f"{name}-{version}.zip", deps, "", 900 if name.startswith("zope_instance") else None,
     _HEALTH.get(name), desc)
    for name, version, deps, desc in _COMPONENTS
]

_EVERYWHERE = ["python_runtime", "log_shipper", "monitoring_agent"]
_PLACEMENT = {
    "ZDB01": ["zodb_storage", "blob_storage", "zeo_server", "session_store", "reporting_db"],
    "ZAPP01": ["license_service", "zope_base", "auth_ldap", "zope_instance_1", "zope_instance_2", "catalog"],
    "ZAPP02": ["license_service", "zope_base", "auth_ldap", "zope_instance_3", "zope_instance_4", "workflow_engine"],
    "ZSRCH01": ["search_engine", "search_indexer", "search_ui"],
    "ZSVC01": ["ldap_directory", "mail_relay", "smtp_gateway", "mail_queue", "notifications", "reporting",
               "scheduler", "audit_trail"],
    "ZWEB01": ["static_assets", "load_balancer", "web_frontend", "admin_console", "api_gateway", "health_dashboard"],
}
_PORTS = {
    "zeo_server": 8100, "zope_instance_1": 8081, "zope_instance_2": 8082, "zope_instance_3": 8083,
    "zope_instance_4": 8084, "search_engine": 9200, "load_balancer": 80, "api_gateway": 8443,
}

MAPPING_HEADERS = ("Hostname", "Component", "port", "zeo_address")
MAPPING = []
for _host, _comps in _PLACEMENT.items():
    for _comp in _EVERYWHERE + _comps:
        _zeo = "127.0.0.11:8100" if _comp.startswith("zope_instance") or _comp == "catalog" else None
        MAPPING.append((_host, _comp, _PORTS.get(_comp), _zeo))

# Scope, Key, Value
PARAMETERS = [
    ("common", "install_root", "C:\\Product"),
    ("common", "log_level", "INFO"),
    ("component:zeo_server", "cache_size_mb", 512),
    ("component:notifications", "subject_template", 'Workflow "{{state}}" for ${title} \u2014 r\u00e9sum\u00e9'),
    ("host:ZAPP01", "log_level", "DEBUG"),
]
