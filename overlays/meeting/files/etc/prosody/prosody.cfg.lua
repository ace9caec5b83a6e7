-- Prosody main configuration of the appliance (read-only image file).
--
-- Everything that depends on the machine (domain, certificates, secrets,
-- virtual hosts, components) lives in /data/config/prosody/appliance.cfg.lua,
-- which appliance-admin renders at setup time and which is included at the
-- end of this file. Only global options belong here.

-- Nobody administers Prosody over XMPP; component admins (jicofo's focus
-- account) are set per component in the rendered file.
admins = { }

modules_enabled = {
	"roster";   -- needed by client_proxy / presence subscriptions
	"saslauth"; -- authentication
	"tls";      -- STARTTLS on c2s (jicofo and jvb on loopback)
	"disco";    -- service discovery (Jitsi finds its components this way)
	"ping";     -- XEP-0199
	"smacks";   -- XEP-0198 stream management (BOSH/WebSocket reconnects)
	"posix";    -- pidfile, umask
	"admin_shell"; -- `prosodyctl shell` over a root-only socket: appliance-admin's idle check
	"limits";   -- read rate per client connection (below)
}

-- Every client connection (TCP c2s, WebSocket; the first request of a BOSH
-- session) is read at most this fast: 10 kB/s, the value Jitsi's own
-- configuration uses. A web client sends far less; a flood or a quick
-- succession of password guesses on one connection is slowed down. jicofo
-- and the videobridge are exempt once signed in (unlimited_jids in the
-- rendered file). Prosody never sees client addresses (nginx does not
-- forward them), so limits per address are nginx's. Debian's Prosody 0.12
-- has no module throttling failed logins (mod_limit_auth is a community
-- module, not in the prosody package).
limits = {
	c2s = {
		rate = "10kb/s";
	};
}

-- Never federate: no server-to-server listener or connections at all.
-- "offline" would store messages for offline users on disk.
modules_disabled = {
	"s2s";
	"offline";
}

-- No logs at all: an empty table configures no sink (a missing `log`
-- would fall back to the console).
log = { }

pidfile = "/run/prosody/prosody.pid"
data_path = "/var/lib/prosody"
umask = "027"

-- Storage: accounts of the hosts (internal_hashed) on disk; all MUC
-- components override this with "memory" in the rendered file.
storage = "internal"
authentication = "internal_hashed"
c2s_require_encryption = true

-- Listen on loopback only. Clients reach BOSH/WebSocket through nginx
-- (TLS terminated there), jicofo and jvb use c2s on 127.0.0.1:5222.
interfaces = { "127.0.0.1", "::1" }
c2s_interfaces = { "127.0.0.1", "::1" }
c2s_ports = { 5222 }
c2s_direct_tls_ports = { }
component_ports = { }
http_interfaces = { "127.0.0.1" }
http_ports = { 5280 }
https_ports = { }

-- nginx terminates TLS for /http-bind and /xmpp-websocket.
consider_bosh_secure = true
consider_websocket_secure = true

-- Same-origin only: the web app is served by nginx from the same host.
-- (cross_domain_bosh is obsolete in Prosody 0.12; CORS is switched off per
-- HTTP app instead.)
http_cors_override = {
	bosh = { enabled = false };
	websocket = { enabled = false };
}

Include "/data/config/prosody/appliance.cfg.lua"
