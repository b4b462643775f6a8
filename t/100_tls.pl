
# TLS to the broker (amqps://).  The harness (scripts/test.sh) starts the
# private RabbitMQ node with a TLS listener on SB_AMQPS_PORT that requires a
# client certificate (fail_if_no_peer_cert), with throw-away certificates in
# SB_TLS_DIR (scripts/lib.sh, make_tls_certs): ca.crt signs the broker's
# certificate (DNS:localhost only) and client.crt; other-ca.crt and
# client-other.crt belong to an unrelated CA; client-enc.key is client.key
# under the passphrase in client-enc.pass.
#
# The worker (database postgres) and signalbus_flush() in a backend (database
# fl, which has no worker) are each checked against: the right CA (sent),
# verification on by default (the system CA store does not know our CA:
# refused), a wrong CA (refused, rows kept, a clear error in signalbus_status
# and the log, 08001 from signalbus_flush), a host-name mismatch (refused),
# the broker requiring a client certificate (refused without one or with one
# from another CA, sent with the configured one), an encrypted key and its
# passphrase, and verification switched off explicitly.  A reload that turns
# verification back on must reach a connected worker too.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

for my $v (qw(SB_AMQPS_PORT SB_TLS_DIR))
{
	die "$v is not set: run the tests with scripts/test.sh (it starts the TLS listener)\n"
	  unless $ENV{$v};
}
my $SPORT = $ENV{SB_AMQPS_PORT};
my $TLS = $ENV{SB_TLS_DIR};
for my $f (qw(ca.crt other-ca.crt client.crt client.key client-other.crt
	client-other.key client-enc.key client-enc.pass))
{
	die "$TLS/$f is missing or unreadable (scripts/lib.sh make_tls_certs)\n"
	  unless -r "$TLS/$f";
}
my $PASS = slurp_file("$TLS/client-enc.pass");
chomp $PASS;

my $QW = '100.worker';
my $QF = '100.flush';
my $URL = "amqps://guest:guest\@localhost:$SPORT/%2f";
my $URL_IP = "amqps://guest:guest\@127.0.0.1:$SPORT/%2f";
my $SHOWN = "amqps://guest\@localhost:$SPORT/%2f";
my $SHOWN_IP = "amqps://guest\@127.0.0.1:$SPORT/%2f";

# The right settings: our CA, our client certificate.
my %GOOD = (
	amqp_url => $URL,
	tls_ca_file => "$TLS/ca.crt",
	tls_cert_file => "$TLS/client.crt",
	tls_key_file => "$TLS/client.key");

my $node = new_node(
	'tls',
	amqp_url => $URL,
	flush_interval => '200ms',
	'signalbus.max_backoff' => '1s',
	conf => "include_if_exists = 'tls.conf'");

# tls(%settings): the signalbus.* settings in tls.conf (the others at their
# defaults), reloaded or, with restart => 1, restarted; waits until a new
# session sees them.
my $generation = 0;

sub tls
{
	my (%s) = @_;
	my $restart = delete $s{restart};
	$generation++;
	my $conf = "sbtest.generation = '$generation'\n";
	for my $k (sort keys %s)
	{
		(my $v = $s{$k}) =~ s/'/''/g;
		$conf .= "signalbus.$k = '$v'\n";
	}
	PostgreSQL::Test::Utils::append_to_file($node->data_dir . '/tls.conf.tmp', $conf);
	rename($node->data_dir . '/tls.conf.tmp', $node->data_dir . '/tls.conf')
	  or die "rename: $!";
	if ($restart)
	{
		$node->restart;
	}
	else
	{
		$node->reload;
		$node->poll_query_until('postgres', 'SHOW sbtest.generation', $generation)
		  or die "reload of tls.conf not seen";
	}
	return;
}

# the server's clock, for "an error newer than this"
sub server_now
{
	return $node->safe_psql('postgres', 'SELECT pg_catalog.clock_timestamp()');
}

sub worker_status
{
	return $node->safe_psql('postgres',
		"SELECT state || ' | ' || coalesce(last_error, '') FROM signalbus_status WHERE database = 'postgres'"
	);
}

# wait until the worker reports an error matching $re newer than $since
sub wait_worker_error
{
	my ($re, $since, $what, $timeout) = @_;
	(my $req = $re) =~ s/'/''/g;
	my $ok = wait_for_sql(
		$node,
		"SELECT last_error ~* '$req' AND last_error_at > '$since' "
		  . "FROM signalbus_status WHERE database = 'postgres'",
		't', $timeout // 20);
	ok($ok, $what) or diag('worker: ' . worker_status());
	return $ok;
}

sub ids_of
{
	my ($msgs) = @_;
	return join(',', sort { $a <=> $b } map { body_json($_)->{id} } @$msgs);
}

sub pending_ids
{
	my ($db) = @_;
	return $node->safe_psql($db, 'SELECT coalesce(string_agg(id::text, \',\' ORDER BY id), \'\') FROM t');
}

# insert $n rows into t of $db (autoflush off for the flush database is
# irrelevant: it has no worker); returns their ids "a,b,c"
sub add_rows
{
	my ($db, $n, $tag) = @_;
	return $node->safe_psql($db,
		"WITH i AS (INSERT INTO t (v) SELECT '$tag' FROM generate_series(1, $n) RETURNING id) "
		  . "SELECT string_agg(id::text, ',' ORDER BY id) FROM i");
}

# ---------------------------------------------------------------------------
# start: settings at their defaults except the URL: verification is on and
# the CA is the system's store, which does not know our CA
# ---------------------------------------------------------------------------
$node->start;
declare_queue($QW);
declare_queue($QF);
$node->safe_psql('postgres', 'CREATE DATABASE fl');
for my $db (qw(postgres fl))
{
	$node->safe_psql($db, "CREATE EXTENSION signalbus;
		CREATE TABLE t (id bigserial PRIMARY KEY, v text);
		SELECT signalbus_register('t', routing_key => '"
		  . ($db eq 'fl' ? $QF : $QW) . "');");
}

is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
		  . "WHERE name IN ('signalbus.tls_verify_peer', 'signalbus.tls_verify_hostname', "
		  . "'signalbus.tls_ca_file', 'signalbus.tls_cert_file')"),
	'signalbus.tls_ca_file= signalbus.tls_cert_file= signalbus.tls_verify_hostname=on signalbus.tls_verify_peer=on',
	'defaults: verification of the broker certificate and host name on, system CA store');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(name || ':' || context, ' ' ORDER BY name) FROM pg_settings WHERE name LIKE 'signalbus.tls%'"
	),
	'signalbus.tls_ca_file:sighup signalbus.tls_cert_file:sighup signalbus.tls_key_file:sighup signalbus.tls_key_password_file:sighup signalbus.tls_verify_hostname:sighup signalbus.tls_verify_peer:sighup',
	'the TLS settings are sighup (tls_key_password is hidden from pg_settings)');

# A session cannot switch verification off for itself.
{
	my ($ret, $out, $err) = $node->psql('fl',
		"\\set VERBOSITY verbose\nSET signalbus.tls_verify_peer = off");
	like($err, qr/ERROR:\s+55P02:/, 'SET signalbus.tls_verify_peer in a session fails (55P02)');
	($ret, $out, $err) = $node->psql('fl',
		"\\set VERBOSITY verbose\nSET signalbus.tls_verify_hostname = off");
	like($err, qr/ERROR:\s+55P02:/, 'SET signalbus.tls_verify_hostname in a session fails (55P02)');
}

# ---------------------------------------------------------------------------
# the worker: refused until everything is right; every refusal keeps the rows
# ---------------------------------------------------------------------------
my $kept = add_rows('postgres', 3, 'w-default-store');
my $t0 = server_now();
wait_worker_error('verif', $t0,
	'worker, system CA store (verification on by default): refused, status says the certificate could not be verified');
like(
	slurp_file($node->logfile),
	qr/signalbus worker for database "postgres": could not connect to AMQP broker at \Q$SHOWN\E: [^\n]*verif/i,
	'worker: the log says it could not connect and why');

tls(amqp_url => $URL, tls_ca_file => "$TLS/other-ca.crt",
	tls_cert_file => "$TLS/client.crt", tls_key_file => "$TLS/client.key");
$t0 = server_now();
$kept .= ',' . add_rows('postgres', 2, 'w-wrong-ca');
wait_worker_error('verif', $t0, 'worker, wrong CA: refused, status says the certificate could not be verified');
like(worker_status(), qr/^(backoff|connecting) \| could not connect to AMQP broker at \Q$SHOWN\E: /,
	'worker, wrong CA: status is backoff with "could not connect to AMQP broker at amqps://guest@localhost:PORT/%2f: ..."');

tls(%GOOD, amqp_url => $URL_IP);
$t0 = server_now();
$kept .= ',' . add_rows('postgres', 2, 'w-hostname');
wait_worker_error('host ?name', $t0, 'worker, host-name mismatch (127.0.0.1 vs DNS:localhost): refused');

tls(%GOOD, tls_cert_file => '', tls_key_file => '');
$t0 = server_now();
$kept .= ',' . add_rows('postgres', 2, 'w-no-client-cert');
wait_worker_error('could not connect', $t0,
	'worker, no client certificate for a broker that requires one: refused');

tls(%GOOD, tls_cert_file => "$TLS/client-other.crt", tls_key_file => "$TLS/client-other.key");
$t0 = server_now();
$kept .= ',' . add_rows('postgres', 2, 'w-other-client-cert');
wait_worker_error('could not connect', $t0,
	'worker, client certificate of another CA: refused');

is(pending_ids('postgres'), $kept, 'worker: every refused row is kept');
is(queue_length($QW), 0, 'worker: the broker received nothing while refused');

# now everything right: the kept rows go out
tls(%GOOD);
{
	my $n = my @k = split /,/, $kept;
	my $msgs = get_messages($QW, count => $n, timeout => 30);
	is(ids_of($msgs), $kept, "worker, right CA and client certificate: the $n kept rows reached the broker");
	ok(wait_for_sql($node, 'SELECT count(*) FROM t', '0'), 'worker: table drained');
	like(worker_status(), qr/^(idle|sending) \| /, 'worker: idle again');
	like(slurp_file($node->logfile),
		qr/signalbus worker for database "postgres" connected to \Q$SHOWN\E/,
		'worker: the log says it connected over amqps');
	my $new = add_rows('postgres', 2, 'w-good');
	is(ids_of(get_messages($QW, count => 2, timeout => 30)), $new, 'worker: new rows are sent over TLS');
}

# A reload that makes the broker's certificate untrusted must reach a worker
# that is already connected: it reconnects (and is refused) rather than
# going on over a connection the settings no longer allow.
{
	tls(%GOOD, tls_ca_file => "$TLS/other-ca.crt");
	my $t1 = server_now();
	wait_worker_error('verif', $t1,
		'worker: a reload to a CA that does not sign the broker makes it reconnect and be refused', 8);
	my $ids = add_rows('postgres', 2, 'w-after-reload');
	# proving a negative: the worker retries at least every second
	sleep 2.5;
	is(queue_length($QW), 0, 'worker: nothing sent after the reload made the broker untrusted')
	  or diag('rows sent anyway; worker: ' . worker_status());
	$node->safe_psql('postgres', 'DELETE FROM t');
	get_messages($QW);
}

# Verification switched off explicitly (restart: a fresh connection)
tls(%GOOD, tls_ca_file => "$TLS/other-ca.crt", tls_verify_peer => 'off', restart => 1);
{
	my $ids = add_rows('postgres', 2, 'w-verify-off');
	is(ids_of(get_messages($QW, count => 2, timeout => 30)), $ids,
		'worker, wrong CA but tls_verify_peer = off: sent');
	ok(wait_for_sql($node, 'SELECT count(*) FROM t', '0'), 'worker, tls_verify_peer = off: drained');
}
tls(%GOOD, amqp_url => $URL_IP, tls_verify_hostname => 'off', restart => 1);
{
	my $ids = add_rows('postgres', 2, 'w-hostname-off');
	is(ids_of(get_messages($QW, count => 2, timeout => 30)), $ids,
		'worker, host-name mismatch but tls_verify_hostname = off: sent');
	ok(wait_for_sql($node, 'SELECT count(*) FROM t', '0'), 'worker, tls_verify_hostname = off: drained');
	like($node->safe_psql('postgres', "SELECT broker FROM signalbus_status WHERE database = 'postgres'"),
		qr/^\Q$SHOWN_IP\E$/, 'worker: status shows the amqps broker without password');
}

# ---------------------------------------------------------------------------
# signalbus_flush() in a backend (database fl has no worker): a connection
# of its own with the settings the backend sees
# ---------------------------------------------------------------------------

# flush t in fl: (result, sqlstate, stderr)
sub flush_fl
{
	my ($out, $err) = ('', '');
	$node->psql('fl', "\\set VERBOSITY verbose\nSELECT signalbus_flush('t')",
		stdout => \$out, stderr => \$err);
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($out, $state // '', $err);
}

# refused(name, error regex, settings...): flush fails with 08001 and the
# error, the rows stay, the broker gets nothing
sub refused
{
	my ($name, $re, %s) = @_;
	tls(%s);
	my $before = pending_ids('fl');
	my ($out, $state, $err) = flush_fl();
	is($state, '08001', "flush, $name: fails with 08001") or diag($err);
	like($err, qr/could not connect to AMQP broker at amqps:\/\/guest\@[^ ]+: [^\n]*$re/i,
		"flush, $name: the error says why");
	is(pending_ids('fl'), $before, "flush, $name: rows kept");
	is(queue_length($QF), 0, "flush, $name: broker received nothing");
	return;
}

# sent(name, settings...): flush sends every pending row
sub sent
{
	my ($name, %s) = @_;
	tls(%s);
	my $before = pending_ids('fl');
	my $n = my @b = split /,/, $before;
	my ($out, $state, $err) = flush_fl();
	is($out, $n, "flush, $name: returns $n") or diag($err);
	is(ids_of(get_messages($QF, count => $n, timeout => 10)), $before,
		"flush, $name: the broker received the rows");
	is(pending_ids('fl'), '', "flush, $name: table drained");
	return;
}

add_rows('fl', 3, 'f1');
sent('right CA and client certificate', %GOOD);
add_rows('fl', 2, 'f2');
refused('system CA store (the default)', 'verif', amqp_url => $URL,
	tls_cert_file => "$TLS/client.crt", tls_key_file => "$TLS/client.key");
refused('wrong CA', 'verif', %GOOD, tls_ca_file => "$TLS/other-ca.crt");
refused('host-name mismatch', 'host ?name', %GOOD, amqp_url => $URL_IP);
# the broker's refusal arrives as a TLS alert ("certificate required",
# "unknown ca"): the error must say so, not just "an SSL error occurred"
refused('no client certificate', '(certificate|alert)', %GOOD,
	tls_cert_file => '', tls_key_file => '');
refused('client certificate of another CA', '(certificate|alert|unknown ca)', %GOOD,
	tls_cert_file => "$TLS/client-other.crt", tls_key_file => "$TLS/client-other.key");
refused('encrypted key without its passphrase', '(key|certificate)', %GOOD,
	tls_key_file => "$TLS/client-enc.key");
refused('encrypted key, wrong passphrase', '(key|certificate)', %GOOD,
	tls_key_file => "$TLS/client-enc.key", tls_key_password => 'not-the-passphrase');
refused('certificate without key', 'tls_key_file', %GOOD, tls_key_file => '');
refused('missing CA file', 'CA file', %GOOD, tls_ca_file => "$TLS/no-such-ca.crt");
sent('encrypted key with its passphrase', %GOOD,
	tls_key_file => "$TLS/client-enc.key", tls_key_password => $PASS);
add_rows('fl', 2, 'f3');
sent('wrong CA, tls_verify_peer = off', %GOOD,
	tls_ca_file => "$TLS/other-ca.crt", tls_verify_peer => 'off');
add_rows('fl', 2, 'f4');
sent('host-name mismatch, tls_verify_hostname = off', %GOOD,
	amqp_url => $URL_IP, tls_verify_hostname => 'off');
add_rows('fl', 1, 'f5');
refused('host-name mismatch, only tls_verify_peer = off', 'host ?name', %GOOD,
	amqp_url => $URL_IP, tls_verify_peer => 'off');
sent('right settings again', %GOOD);

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no server process crashed');

$node->stop;
done_testing();
