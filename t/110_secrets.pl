
# Secrets stay secret.  The broker password (in signalbus.amqp_url) and the
# client key's passphrase (signalbus.tls_key_password) live only in
# superuser-only settings: SHOW by a non-superuser fails with 42501, and
# neither ever appears in a table, signalbus_status, pg_stat_activity, an
# error message, a log line, or pg_dump / pg_dumpall output -- including
# while the broker refuses the login, and when a reload brings a malformed
# URL or a new password.  The test greps all of those for each secret.
#
# The secrets are set in postgresql.conf, never sent over SQL (the test
# cluster logs every statement), except where the test checks an error
# message and has switched statement logging off for that.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use File::Temp qw(tempdir);
use IPC::Run;
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
my $Q = '110.q';
my $QE = '110.eve';

# distinctive secrets: a match can only be a leak
sub secret
{
	my ($tag) = @_;
	my @c = ('a' .. 'z', 'A' .. 'Z', '0' .. '9');
	return "$tag" . join('', map { $c[ int(rand(@c)) ] } 1 .. 16);
}
my $PW = secret('Pw110x');          # the broker password in the URL
my $PW_BROKER2 = secret('Pw110y');  # a password the broker switches to
my $PW_BAD = secret('Pw110z');      # in a malformed URL (reload)
my $PW_BAD2 = secret('Pw110w');     # in a malformed URL (ALTER SYSTEM)
my $PW_NEW = secret('Pw110v');      # a rotated password (password file)
my $PW_NEW2 = secret('Pw110u');     # rotated again (the file only)
my $KP = secret('Kp110x');          # the key passphrase
my $KP_NEW = secret('Kp110y');      # a rotated key passphrase (reload)
my %SECRETS = (
	'broker password' => $PW,
	'password the broker switched to' => $PW_BROKER2,
	'password in a malformed URL (reload)' => $PW_BAD,
	'password in a malformed URL (ALTER SYSTEM)' => $PW_BAD2,
	'rotated broker password' => $PW_NEW,
	'password rotated again' => $PW_NEW2,
	'key passphrase' => $KP,
	'rotated key passphrase' => $KP_NEW);

# the client key, encrypted under the test's passphrases
my $dir = tempdir(CLEANUP => 1);
for ([ $KP, "$dir/enc.key" ], [ $KP_NEW, "$dir/enc2.key" ])
{
	my ($pass, $file) = @$_;
	local $ENV{SB_KEY_PASS} = $pass;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'openssl', 'pkey', '-in', "$TLS/client.key", '-aes256',
			'-passout', 'env:SB_KEY_PASS', '-out', $file ],
		'<', \undef, '>', \$out, '2>', \$err)
	  or die "openssl pkey failed: $err";
}

# a broker user of our own, with the secret password
broker_ctl('-q', 'delete_user', 'sb110') if broker_ctl('-q', 'list_users') =~ /^sb110\s/m;
broker_ctl('-q', 'add_user', 'sb110', $PW);
broker_ctl('-q', 'set_permissions', '-p', '/', 'sb110', '.*', '.*', '.*');
END { local $?; eval { broker_ctl('-q', 'delete_user', 'sb110') }; }

sub url { my ($pw, $port) = @_; return "amqps://sb110:$pw\@localhost:" . ($port // $SPORT) . '/%2f'; }
my $SHOWN = "amqps://sb110\@localhost:$SPORT/%2f";

my $node = new_node(
	'secrets',
	amqp_url => url($PW),
	flush_interval => '300ms',
	'signalbus.max_backoff' => '1s',
	'signalbus.max_attempts' => 1,
	'signalbus.tls_ca_file' => "$TLS/ca.crt",
	'signalbus.tls_cert_file' => "$TLS/client.crt",
	'signalbus.tls_key_file' => "$dir/enc.key",
	'signalbus.tls_key_password' => $KP,
	conf => "include_if_exists = 'secrets.conf'");

# conf(%settings): rewrite secrets.conf (overrides postgresql.conf), reload
my $generation = 0;

sub conf
{
	my (%s) = @_;
	$generation++;
	my $text = "sbtest.generation = '$generation'\n";
	for my $k (sort keys %s)
	{
		(my $v = $s{$k}) =~ s/'/''/g;
		$text .= "$k = '$v'\n";
	}
	my $f = $node->data_dir . '/secrets.conf';
	open(my $fh, '>', "$f.tmp") or die "$f.tmp: $!";
	print $fh $text;
	close $fh;
	rename("$f.tmp", $f) or die "rename: $!";
	$node->reload;
	$node->poll_query_until('postgres', 'SHOW sbtest.generation', $generation)
	  or die "reload not seen";
	return;
}

# every place a secret could end up is collected here: name => text
my %seen;

sub collect
{
	my ($where, $text) = @_;
	$seen{$where} .= ($text // '') . "\n";
	return $text;
}

# run SQL as a role; returns (stdout, stderr) and collects both
sub sql_as
{
	my ($user, $db, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err,
		connstr => $node->connstr($db) . " user=$user");
	collect("psql output ($user)", "$out\n$err");
	return ($out, $err);
}

sub sqlstate { my ($err) = @_; return ($err =~ /ERROR:\s+([0-9A-Z]{5}):/)[0] // ''; }

sub status_text
{
	my ($user) = @_;
	my ($out) = sql_as($user // 'postgres', 'postgres',
		"SELECT row_to_json(s)::text FROM signalbus_status s");
	return collect('signalbus_status', $out);
}

$node->start;
declare_queue($Q);
declare_queue($QE);
$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE ROLE eve LOGIN;
	CREATE ROLE mon LOGIN IN ROLE pg_read_all_settings;
	CREATE TABLE s (id bigserial PRIMARY KEY, v text, priority int);
	SELECT signalbus_register('s', routing_key => '$Q');
	GRANT SELECT ON s TO eve;
	CREATE DATABASE evedb;
});
# eve's own signal table, in a database without a worker
$node->safe_psql('evedb', 'CREATE EXTENSION signalbus; CREATE SCHEMA eve AUTHORIZATION eve');
sql_as('eve', 'evedb', qq{
	CREATE TABLE eve.e (id bigserial PRIMARY KEY, v text);
	SELECT signalbus_register('eve.e', routing_key => '$QE');
});

# ---------------------------------------------------------------------------
# the secrets work: TLS with an encrypted key, login with the password
# ---------------------------------------------------------------------------
$node->safe_psql('postgres', q{INSERT INTO s (v) VALUES ('a'), ('b')});
my $m = get_messages($Q, count => 2, timeout => 30);
is(scalar @$m, 2, 'worker sends over amqps with the password and the encrypted key')
  or diag(status_text());
ok(wait_for_sql($node, 'SELECT count(*) FROM s', '0'), 'table drained');
like(status_text(), qr/"broker":"\Q$SHOWN\E"/, 'signalbus_status shows the broker as amqps://sb110@host:port/vhost');

# a poison row: a dead letter and an error in signalbus_status
$node->safe_psql('postgres', q{INSERT INTO s (v, priority) VALUES ('poison', 999)});
ok(wait_for_sql($node, 'SELECT count(*) FROM signalbus_dead_letters', '1'),
	'poison row dead-lettered');

# ---------------------------------------------------------------------------
# who may read the settings
# ---------------------------------------------------------------------------
for my $guc (qw(signalbus.amqp_url signalbus.amqp_password_file signalbus.tls_key_password
	signalbus.tls_key_file))
{
	my ($out, $err) = sql_as('eve', 'postgres', "SHOW $guc");
	is(sqlstate($err), '42501', "SHOW $guc as a non-superuser fails with 42501");
	($out, $err) = sql_as('eve', 'postgres', "SELECT current_setting('$guc')");
	is(sqlstate($err), '42501', "current_setting('$guc') as a non-superuser fails with 42501");
	($out, $err) = sql_as('eve', 'postgres',
		"SELECT count(*) FROM pg_settings WHERE name = '$guc'");
	is($out, '0', "$guc is not in pg_settings for a non-superuser");
}
{
	my ($out, $err) = sql_as('eve', 'postgres', 'SHOW ALL');
	unlike($out, qr/^signalbus\.(amqp_url|tls_key_password|tls_key_file)\|/m,
		'SHOW ALL of a non-superuser lists none of the secret settings');
	($out, $err) = sql_as('eve', 'postgres', 'SELECT count(*) FROM pg_file_settings');
	is(sqlstate($err), '42501', 'pg_file_settings is closed to a non-superuser');
	($out, $err) = sql_as('mon', 'postgres', 'SHOW signalbus.amqp_url');
	is($out, url($PW), 'a member of pg_read_all_settings may read signalbus.amqp_url (as documented)');
	delete $seen{'psql output (mon)'};    # allowed to see it
	# (a superuser may see everything: not collected)
	$node->psql('postgres', 'SHOW ALL', stdout => \$out);
	unlike($out, qr/signalbus\.tls_key_password(?!_file)/, 'SHOW ALL omits signalbus.tls_key_password even for a superuser');
}

# a non-superuser's flush works with settings it cannot read
$node->safe_psql('evedb', q{INSERT INTO eve.e (v) VALUES ('e1')});
{
	my ($out, $err) = sql_as('eve', 'evedb', q{SELECT signalbus_flush('eve.e')});
	is($out, '1', "a non-superuser's signalbus_flush() connects with the secret settings")
	  or diag($err);
	is(scalar @{ get_messages($QE, count => 1, timeout => 10) }, 1, 'its message arrived');
}

# ---------------------------------------------------------------------------
# the broker refuses the login: status, flush errors, the log
# ---------------------------------------------------------------------------
broker_ctl('-q', 'change_password', 'sb110', $PW_BROKER2);
broker_ctl('-q', 'close_all_connections', 'signalbus test 110: password changed');
my $t0 = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
$node->safe_psql('postgres', q{INSERT INTO s (v) VALUES ('kept1'), ('kept2')});
$node->safe_psql('evedb', q{INSERT INTO eve.e (v) VALUES ('kept3')});
ok( wait_for_sql(
		$node,
		"SELECT last_error ~ 'ACCESS_REFUSED|login' AND last_error_at > '$t0' FROM signalbus_status",
		't', 20),
	'worker: login refused, reason in signalbus_status');
status_text('postgres');
status_text('eve');
for my $user (qw(postgres eve))
{
	my ($db, $call) = $user eq 'eve'
	  ? ('evedb', q{SELECT signalbus_flush('eve.e')})
	  : ('postgres', q{SELECT signalbus_flush('s')});
	my ($out, $err) = sql_as($user, $db, $call);
	is(sqlstate($err), '08001', "signalbus_flush() as $user while the login is refused: 08001");
	like($err, qr/could not connect to AMQP broker at \Q$SHOWN\E: /,
		"signalbus_flush() as $user: the error names the broker without the password");
}
for my $user (qw(postgres eve))
{
	my ($out, $err) = sql_as($user, $user eq 'eve' ? 'evedb' : 'postgres', q{CALL signalbus_flushmany()});
	like(sqlstate($err), qr/^08/, "CALL signalbus_flushmany() as $user while refused: connection error");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM s'), '2', 'rows kept while the login is refused');
is($node->safe_psql('evedb', 'SELECT count(*) FROM eve.e'), '1', "eve's row kept while the login is refused");

# the broker takes the password again: the kept rows go
broker_ctl('-q', 'change_password', 'sb110', $PW);
is(scalar @{ get_messages($Q, count => 2, timeout => 30) }, 2, 'worker: kept rows sent once the login works again');
ok(wait_for_sql($node, 'SELECT count(*) FROM s', '0'), 'drained');

# ---------------------------------------------------------------------------
# everything a secret could leak into so far
# ---------------------------------------------------------------------------
collect('pg_stat_activity', $node->safe_psql('postgres',
		'SELECT string_agg(row_to_json(a)::text, E\'\n\') FROM pg_stat_activity a'));
for my $db (qw(postgres evedb))
{
	for my $t (qw(signalbus_registrations signalbus_dead_letters))
	{
		collect("table $t", $node->safe_psql($db,
				"SELECT coalesce(string_agg(row_to_json(x)::text, E'\\n'), '') FROM $t x"));
	}
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM signalbus_dead_letters'), '1',
	'the dead letter is there to be searched');
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'pg_dump', '-d', $node->connstr('postgres') ],
		'<', \undef, '>', \$out, '2>', \$err);
	ok(length($out) > 1000 && $out =~ /signalbus_dead_letters/, 'pg_dump ran') or diag($err);
	collect('pg_dump', "$out\n$err");
	($out, $err) = ('', '');
	IPC::Run::run([ 'pg_dumpall', '-d', $node->connstr('postgres') ],
		'<', \undef, '>', \$out, '2>', \$err);
	ok(length($out) > 1000, 'pg_dumpall ran') or diag($err);
	collect('pg_dumpall', "$out\n$err");
}
collect('server log', slurp_file($node->logfile));

sub no_secret_in
{
	my ($where, @names) = @_;
	my $text = $seen{$where} // '';
	for my $name (@names ? @names : sort keys %SECRETS)
	{
		my $s = $SECRETS{$name};
		my @hits = grep { /\Q$s\E/ } split /\n/, $text;
		ok(!@hits, "$where: no $name") or diag("leaked in: $hits[0]");
	}
	return;
}
ok(length($seen{'server log'}) > 0, 'the server log was read');
no_secret_in($_, 'broker password', 'password the broker switched to', 'key passphrase')
  for sort keys %seen;

# ---------------------------------------------------------------------------
# reloads and SET with secrets: each checked in the log lines it added
# ---------------------------------------------------------------------------
sub log_since
{
	my ($offset) = @_;
	return slurp_file($node->logfile, $offset);
}

sub no_secret_in_text
{
	my ($what, $text, $name) = @_;
	my $s = $SECRETS{$name};
	my @hits = grep { /\Q$s\E/ } split /\n/, $text;
	ok(!@hits, "$what: no $name") or diag("leaked in: $hits[0]");
	return;
}

# a malformed URL in the configuration file: rejected at reload, and the
# rejection must not print the password it contains
{
	my $off = -s $node->logfile;
	conf('signalbus.amqp_url' => "amqps://sb110:$PW_BAD\@localhost:notaport/%2f");
	# the rejection is logged by the postmaster and every backend
	$node->wait_for_log(qr/signalbus\.amqp_url/, $off);
	no_secret_in_text('server log after reloading a malformed URL', log_since($off),
		'password in a malformed URL (reload)');
	is($node->safe_psql('postgres', 'SHOW signalbus.amqp_url'), url($PW),
		'the malformed URL was not taken');
	conf();
}

# the same through ALTER SYSTEM (statement logging off for this session, so
# that only signalbus's own error could carry it)
{
	my $off = -s $node->logfile;
	my ($out, $err) = ('', '');
	$node->psql('postgres',
		"SET log_statement = 'none'; SET log_min_error_statement = 'panic';\n"
		  . "ALTER SYSTEM SET signalbus.amqp_url = 'amqps://sb110:$PW_BAD2\@localhost:notaport/%2f'",
		stdout => \$out, stderr => \$err);
	like($err, qr/ERROR/, 'ALTER SYSTEM with a malformed URL fails');
	no_secret_in_text('error of ALTER SYSTEM with a malformed URL', $err,
		'password in a malformed URL (ALTER SYSTEM)');
	no_secret_in_text('server log after ALTER SYSTEM with a malformed URL', log_since($off),
		'password in a malformed URL (ALTER SYSTEM)');
}

# Rotating the broker password the documented way: in
# signalbus.amqp_password_file (the URL without it), then in the file only.
# (A password in signalbus.amqp_url is logged by PostgreSQL itself when a
# reload changes it: "parameter ... changed to ...", as the README says.)
sub write_password
{
	my ($pw) = @_;
	open(my $fh, '>', "$dir/password.tmp") or die "$dir/password.tmp: $!";
	print $fh "$pw\n";
	close $fh;
	chmod 0600, "$dir/password.tmp";
	rename("$dir/password.tmp", "$dir/password") or die "rename: $!";
	return;
}
{
	my $off = -s $node->logfile;
	write_password($PW_NEW);
	broker_ctl('-q', 'change_password', 'sb110', $PW_NEW);
	conf(
		'signalbus.amqp_url' => "amqps://sb110\@localhost:$SPORT/%2f",
		'signalbus.amqp_password_file' => "$dir/password");
	$node->safe_psql('postgres', q{INSERT INTO s (v) VALUES ('password file')});
	is(scalar @{ get_messages($Q, count => 1, timeout => 30) }, 1,
		'worker sends with the password from signalbus.amqp_password_file')
	  or diag(status_text());
	write_password($PW_NEW2);
	broker_ctl('-q', 'change_password', 'sb110', $PW_NEW2);
	broker_ctl('-q', 'close_all_connections', 'signalbus test 110: password rotated');
	$node->safe_psql('postgres', q{INSERT INTO s (v) VALUES ('password file rotated')});
	is(scalar @{ get_messages($Q, count => 1, timeout => 30) }, 1,
		'worker reconnects with the rotated password from the file, no reload needed')
	  or diag(status_text());
	my ($out, $err) = sql_as('postgres', 'postgres', q{SELECT signalbus_flush('s')});
	is($out, '0', 'signalbus_flush() logs in with the password file too') or diag($err);
	my $log = log_since($off);
	no_secret_in_text('server log after rotating through the password file', $log, 'rotated broker password');
	no_secret_in_text('server log after rotating through the password file', $log, 'password rotated again');
	status_text();
	no_secret_in('signalbus_status', 'rotated broker password', 'password rotated again');
}

# Rotating the key passphrase by a reload, through
# signalbus.tls_key_password_file: the server log must not receive it
{
	my $off = -s $node->logfile;
	open(my $kfh, '>', "$dir/keypass") or die "$dir/keypass: $!";
	print $kfh "$KP_NEW\n";
	close($kfh);
	chmod 0600, "$dir/keypass";
	conf(
		'signalbus.amqp_url' => "amqps://sb110\@localhost:$SPORT/%2f",
		'signalbus.amqp_password_file' => "$dir/password",
		'signalbus.tls_key_file' => "$dir/enc2.key",
		'signalbus.tls_key_password' => '',
		'signalbus.tls_key_password_file' => "$dir/keypass");
	my ($out, $err) = sql_as('postgres', 'postgres', q{SELECT signalbus_flush('s')});
	is($out, '0', 'signalbus_flush() connects with the rotated key and passphrase') or diag($err);
	no_secret_in_text('server log after rotating the key passphrase by reload', log_since($off),
		'rotated key passphrase');
}

# and once more over everything the server logged
no_secret_in_text('whole server log', slurp_file($node->logfile), $_)
  for 'broker password', 'password the broker switched to', 'key passphrase';
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no server process crashed');

$node->stop;
done_testing();
