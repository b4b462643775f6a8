# 015_message_mapping.pl -- row -> AMQP message (DESIGN.md section 3).
#
# Every special column lands in its AMQP field or property, as the broker
# delivers it: exchange, routing_key, body (bytea, text, a domain over
# varchar, json, jsonb, none: the row as JSON), headers (every JSON type),
# the text properties, delivery_mode, priority, timestamp.  NULL in a
# special column means "as if absent".  Registration exchange / routing key
# defaults, and mandatory => true with an unroutable row.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use SignalBusTest;

# --- broker topology ----------------------------------------------------------

declare_exchange('x015_direct');
declare_exchange('x015_reg');
declare_queue('q015_full', [ 'x015_direct', 'rk015' ]);
declare_queue('q015_regx', [ 'x015_reg', 'rk015reg' ]);
declare_queue('q015_regdef', [ 'x015_reg', 's015_regdef' ]);
declare_queue($_)
  for qw(q015_all q015_bytea q015_text q015_domain q015_json q015_jsonb
  q015_row q015_mand q015_nomand), 'S015 Mixed';

my $node = new_node('map015',
	init => { extra => [ '--encoding=UTF8', '--locale=C' ] },
	conf => "timezone = 'UTC'",
	'signalbus.max_attempts' => 1000);
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION signalbus;

	CREATE TABLE s015_all (
		id               bigserial PRIMARY KEY,
		exchange         text,
		routing_key      varchar(100),
		body             bytea,
		headers          jsonb,
		content_type     text,
		content_encoding text,
		correlation_id   text,
		reply_to         text,
		expiration       text,
		message_id       text,
		type             text,
		user_id          text,
		app_id           text,
		delivery_mode    smallint,
		priority         integer,
		"timestamp"      timestamptz
	);
	SELECT signalbus_register('s015_all', routing_key => 'q015_all');

	CREATE TABLE s015_bytea (id bigserial PRIMARY KEY, body bytea);
	SELECT signalbus_register('s015_bytea', routing_key => 'q015_bytea');
	CREATE TABLE s015_text (id bigserial PRIMARY KEY, body text);
	SELECT signalbus_register('s015_text', routing_key => 'q015_text');
	CREATE DOMAIN d015 AS varchar(100);
	CREATE TABLE s015_domain (id bigserial PRIMARY KEY, body d015);
	SELECT signalbus_register('s015_domain', routing_key => 'q015_domain');
	CREATE TABLE s015_json (id bigserial PRIMARY KEY, body json);
	SELECT signalbus_register('s015_json', routing_key => 'q015_json');
	CREATE TABLE s015_jsonb (id bigserial PRIMARY KEY, body jsonb,
	                         content_type text);
	SELECT signalbus_register('s015_jsonb', routing_key => 'q015_jsonb');
	CREATE TABLE s015_row (id integer PRIMARY KEY, v text, n numeric,
	                       flag boolean, j jsonb, tags text[], at timestamptz);
	SELECT signalbus_register('s015_row', routing_key => 'q015_row');
	CREATE TABLE s015_rowcopy (LIKE s015_row);

	CREATE TABLE s015_regx (id bigserial PRIMARY KEY, v text);
	SELECT signalbus_register('s015_regx', exchange => 'x015_reg',
	                          routing_key => 'rk015reg');
	CREATE TABLE s015_regdef (id bigserial PRIMARY KEY, v text);
	SELECT signalbus_register('s015_regdef', exchange => 'x015_reg');
	CREATE SCHEMA "Other015";
	CREATE TABLE "Other015"."S015 Mixed" (id bigserial PRIMARY KEY, v text);
	SELECT signalbus_register('"Other015"."S015 Mixed"');

	CREATE TABLE s015_mand (id bigserial PRIMARY KEY, routing_key text, tag text);
	SELECT signalbus_register('s015_mand', routing_key => 'q015_mand',
	                          mandatory => true);
	CREATE TABLE s015_nomand (id bigserial PRIMARY KEY, routing_key text, tag text);
	SELECT signalbus_register('s015_nomand', routing_key => 'q015_nomand');
});

# --- helpers -----------------------------------------------------------------

sub show
{
	my ($msgs) = @_;
	return join("\n", map { JSON::PP->new->canonical->encode($_) } @$msgs);
}

# exactly $n messages from $queue (waits for them, then takes any extra)
sub take
{
	my ($queue, $n, $what) = @_;
	my $msgs = get_messages($queue, count => $n, timeout => 30);
	push @$msgs, @{ get_messages($queue) };
	is(scalar @$msgs, $n, "$what: $n message(s) in $queue")
	  or diag "broker held:\n" . show($msgs);
	return $msgs;
}

sub drained
{
	my ($table, $what) = @_;
	ok(wait_for_sql($node, qq{SELECT count(*) FROM $table}, '0'),
		"$what: $table is drained");
}

# --- every special column set -------------------------------------------------

my $ts_full = $node->safe_psql('postgres',
	q{SELECT extract(epoch FROM timestamptz '2024-05-06 07:08:09+00')::bigint});
my $ts_y2k = $node->safe_psql('postgres',
	q{SELECT extract(epoch FROM timestamptz '1999-12-31 23:59:59+00')::bigint});
is($ts_y2k, '946684799', 'epoch of 1999-12-31 23:59:59 UTC');

$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s015_all (exchange, routing_key, body, headers, content_type,
		content_encoding, correlation_id, reply_to, expiration, message_id,
		type, user_id, app_id, delivery_mode, priority, "timestamp")
	VALUES ('x015_direct', 'rk015', 'full body'::bytea,
		'{"s": "str", "i": 42, "neg": -7, "big": 9007199254740993,
		  "min": -9223372036854775808, "f": 2.5, "huge": 1e20,
		  "t": true, "fa": false, "n": null,
		  "o": {"x": {"y": "z"}, "k": 1}, "eo": {},
		  "a": [1, "two", null, true, {"p": 1}, [2]], "ea": [],
		  "u": "\u00fcn\u00ef"}',
		'application/x-full', 'gzip', 'corr-015', 'reply.q015', '60000',
		'msg-full', 'full.type', 'guest', 'app015', 1, 255,
		'2024-05-06 07:08:09.999999+00');
	-- every special column NULL: as if the table had none of them
	INSERT INTO s015_all DEFAULT VALUES;
	-- delivery_mode 2, priority 0, a timestamp just before 2000 (PostgreSQL's
	-- epoch: negative internally), a text body in bytea
	INSERT INTO s015_all (body, message_id, delivery_mode, priority, "timestamp")
	VALUES ('dm2'::bytea, 'msg-dm2', 2, 0, '1999-12-31 23:59:59.999999+00');
	COMMIT;
});

{
	my ($m) = @{ take('q015_full', 1, 'all special columns') };
	$m //= {};
	my $p = $m->{properties} // {};
	is($m->{exchange}, 'x015_direct', 'exchange column: exchange');
	is($m->{routing_key}, 'rk015', 'routing_key column: routing key');
	is($m->{body}, 'full body', 'bytea body column: body');
	ok(!exists $m->{body_hex}, 'bytea body: valid UTF-8 here');
	is($p->{content_type}, 'application/x-full', 'content_type');
	is($p->{content_encoding}, 'gzip', 'content_encoding');
	is($p->{correlation_id}, 'corr-015', 'correlation_id');
	is($p->{reply_to}, 'reply.q015', 'reply_to');
	is($p->{expiration}, '60000', 'expiration');
	is($p->{message_id}, 'msg-full', 'message_id');
	is($p->{type}, 'full.type', 'type');
	is($p->{user_id}, 'guest', 'user_id');
	is($p->{app_id}, 'app015', 'app_id');
	is($p->{delivery_mode}, 1, 'delivery_mode 1 (transient)');
	is($p->{priority}, 255, 'priority 255');
	is($p->{timestamp}, $ts_full, 'timestamp: whole seconds, truncated (not rounded)');
	ok(!exists $p->{cluster_id}, 'no cluster_id');

	my $h = $p->{headers} // {};
	is(ref $h, 'HASH', 'headers: a field table');
	is($h->{s}, 'str', 'headers: string');
	is($h->{i}, 42, 'headers: integer');
	is($h->{neg}, -7, 'headers: negative integer');
	# printed as an integer, not as a double (a double would lose the last
	# digit and be printed as 9.00719925474099e+15)
	is("$h->{big}", '9007199254740993', 'headers: integer beyond int32 and 2^53, exact');
	is("$h->{min}", '-9223372036854775808', 'headers: smallest int64, exact');
	is($h->{f}, 2.5, 'headers: float');
	ok(defined $h->{huge} && $h->{huge} == 1e20,
		'headers: integer beyond int64 becomes a double')
	  or diag "huge = " . ($h->{huge} // 'undef');
	ok(JSON::PP::is_bool($h->{t}) && $h->{t}, 'headers: true is a boolean');
	ok(JSON::PP::is_bool($h->{fa}) && !$h->{fa}, 'headers: false is a boolean');
	ok(exists $h->{n} && !defined $h->{n}, 'headers: null is a void value');
	is_deeply($h->{o}, { x => { y => 'z' }, k => 1 }, 'headers: nested object');
	is_deeply($h->{eo}, {}, 'headers: empty object');
	is_deeply($h->{a}, [ 1, 'two', undef, JSON::PP::true, { p => 1 }, [2] ],
		'headers: array of mixed values');
	ok(JSON::PP::is_bool($h->{a}[3]), 'headers: boolean inside an array');
	is_deeply($h->{ea}, [], 'headers: empty array');
	is($h->{u}, "\x{fc}n\x{ef}", 'headers: non-ASCII string');
	is_deeply([ sort keys %$h ],
		[ sort qw(s i neg big min f huge t fa n o eo a ea u) ],
		'headers: exactly the keys of the jsonb object');
}

{
	my $msgs = take('q015_all', 2, 'special columns NULL / registration routing key');
	my ($null) = grep { !exists $_->{properties}{message_id} } @$msgs;
	my ($dm2) = grep { ($_->{properties}{message_id} // '') eq 'msg-dm2' } @$msgs;

	ok($null, 'the all-NULL row arrived') or diag show($msgs);
	$null //= { properties => {} };
	is($null->{exchange}, '', 'NULL exchange: the registration\'s exchange (default)');
	is($null->{routing_key}, 'q015_all', 'NULL routing_key: the registration\'s routing key');
	my $body = eval { body_json($null) } // {};
	is(ref $body, 'HASH', 'NULL body: the row as JSON');
	is_deeply([ sort keys %$body ],
		[ sort qw(id exchange routing_key body headers content_type
			  content_encoding correlation_id reply_to expiration message_id
			  type user_id app_id delivery_mode priority timestamp) ],
		'NULL body: every column is in the JSON, "body" included');
	ok(exists $body->{body} && !defined $body->{body}, 'NULL body: "body": null');
	is(scalar(grep { defined $body->{$_} } keys %$body), 1,
		'NULL body: only id is non-null');
	is_deeply($null->{properties},
		{ content_type => 'application/json', delivery_mode => 2 },
		'all special columns NULL: only the default properties are set (no headers, no priority, no timestamp)')
	  or diag show([$null]);

	ok($dm2, 'the delivery_mode 2 / priority 0 row arrived') or diag show($msgs);
	$dm2 //= { properties => {} };
	is($dm2->{body}, 'dm2', 'bytea body');
	is($dm2->{properties}{delivery_mode}, 2, 'delivery_mode 2 (persistent)');
	is($dm2->{properties}{priority}, 0, 'priority 0 is set, not absent');
	is($dm2->{properties}{timestamp}, $ts_y2k,
		'timestamp before 2000-01-01: truncated towards the past');
	ok(!exists $dm2->{properties}{content_type}, 'bytea body: no content_type');
}
drained('s015_all', 'all special columns');

# --- body kinds ------------------------------------------------------------------

$node->safe_psql('postgres', q{
	INSERT INTO s015_bytea (body) VALUES ('\x00ff80c328fe41'::bytea), (NULL);
	INSERT INTO s015_text (body) VALUES (E'h\u00e9llo \u2713 "q" \\\\ \nline 2'), (NULL);
	INSERT INTO s015_domain (body) VALUES ('plain text in a domain');
	INSERT INTO s015_json (body) VALUES ('{"a" :1,  "b" : [1,2] , "a":3}');
	INSERT INTO s015_jsonb (body, content_type)
	VALUES ('{"b":[1,  2], "a" :1}', NULL),
	       ('["x" , {"k":null}]', 'application/vnd.custom+json');
});

{
	my $msgs = take('q015_bytea', 2, 'bytea body');
	my ($bin) = grep { exists $_->{body_hex} } @$msgs;
	my ($null) = grep { !exists $_->{body_hex} } @$msgs;
	is($bin && $bin->{body_hex}, '00ff80c328fe41', 'bytea body: the exact bytes')
	  or diag show($msgs);
	ok($bin && !exists $bin->{properties}{content_type},
		'bytea body: content_type unset');
	is($bin && $bin->{properties}{delivery_mode}, 2, 'delivery_mode defaults to 2');
	my $row = $null ? eval { body_json($null) } : undef;
	ok($row && exists $row->{body} && !defined $row->{body}
		  && join(',', sort keys %$row) eq 'body,id',
		'NULL bytea body: the row as JSON with "body": null')
	  or diag show($msgs);
	is($null && $null->{properties}{content_type}, 'application/json',
		'NULL bytea body: content_type application/json');
}
drained('s015_bytea', 'bytea body');

{
	my $msgs = take('q015_text', 2, 'text body');
	my ($txt) = grep { $_->{body} !~ /^\{/ } @$msgs;
	my ($null) = grep { $_->{body} =~ /^\{/ } @$msgs;
	is($txt && $txt->{body}, "h\x{e9}llo \x{2713} \"q\" \\ \nline 2",
		'text body: the text, as is (UTF-8)')
	  or diag show($msgs);
	ok($txt && !exists $txt->{properties}{content_type},
		'text body: content_type unset');
	my $row = $null ? eval { body_json($null) } : undef;
	ok($row && exists $row->{body} && !defined $row->{body},
		'NULL text body: the row as JSON with "body": null')
	  or diag show($msgs);
	is($null && $null->{properties}{content_type}, 'application/json',
		'NULL text body: content_type application/json');
}
drained('s015_text', 'text body');

{
	my ($m) = @{ take('q015_domain', 1, 'body of a domain over varchar') };
	is($m && $m->{body}, 'plain text in a domain', 'domain body: the text');
	ok($m && !exists $m->{properties}{content_type},
		'domain over varchar body: content_type unset');
}
drained('s015_domain', 'domain body');

{
	my ($m) = @{ take('q015_json', 1, 'json body') };
	is($m && $m->{body}, '{"a" :1,  "b" : [1,2] , "a":3}',
		'json body: the text as written (spacing, duplicate keys)');
	is($m && $m->{properties}{content_type}, 'application/json',
		'json body: content_type application/json');
}
drained('s015_json', 'json body');

{
	my $msgs = take('q015_jsonb', 2, 'jsonb body');
	my ($obj) = grep { $_->{body} =~ /^\{/ } @$msgs;
	my ($arr) = grep { $_->{body} =~ /^\[/ } @$msgs;
	is($obj && $obj->{body}, '{"a": 1, "b": [1, 2]}', 'jsonb body: canonical text')
	  or diag show($msgs);
	is($obj && $obj->{properties}{content_type}, 'application/json',
		'jsonb body: content_type application/json');
	is($arr && $arr->{body}, '["x", {"k": null}]', 'jsonb array body: canonical text');
	is($arr && $arr->{properties}{content_type}, 'application/vnd.custom+json',
		'content_type column overrides the json default');
}
drained('s015_jsonb', 'jsonb body');

# no body column: the whole row, exactly as to_json(row) writes it
{
	my $values = q{(7, E'quote " back \\\\ tab \t \u00e9', 1.50, true,
		'{"z": [1, {"y": null}], "a": "b"}', '{x,"y z",NULL}',
		'2024-01-02 03:04:05.678+00')};
	$node->safe_psql('postgres', qq{
		SET TIME ZONE 'UTC';
		INSERT INTO s015_rowcopy VALUES $values;
		INSERT INTO s015_row VALUES $values;
	});
	my $expected = $node->safe_psql('postgres',
		q{SET TIME ZONE 'UTC'; SELECT to_json(c)::text FROM s015_rowcopy c});
	utf8::decode($expected);
	my ($m) = @{ take('q015_row', 1, 'no body column') };
	is($m && $m->{body}, $expected, 'no body column: the body is to_json(row)')
	  or diag "expected: $expected";
	is($m && $m->{properties}{content_type}, 'application/json',
		'row as JSON: content_type application/json');
	is_deeply($m && $m->{properties}, { content_type => 'application/json',
		delivery_mode => 2 }, 'row as JSON: no other property set');
	is($m && $m->{exchange}, '', 'registration without exchange: default exchange');
}
drained('s015_row', 'no body column');

# --- registration exchange and routing key ------------------------------------------

$node->safe_psql('postgres', q{
	INSERT INTO s015_regx (v) VALUES ('regx');
	INSERT INTO s015_regdef (v) VALUES ('regdef');
	INSERT INTO "Other015"."S015 Mixed" (v) VALUES ('mixed');
});
{
	my ($m) = @{ take('q015_regx', 1, 'registration exchange and routing key') };
	is($m && $m->{exchange}, 'x015_reg', 'registration exchange');
	is($m && $m->{routing_key}, 'rk015reg', 'registration routing key');
	is($m && body_json($m)->{v}, 'regx', 'registration exchange: the row');

	($m) = @{ take('q015_regdef', 1, 'registration exchange, NULL routing key') };
	is($m && $m->{exchange}, 'x015_reg', 'registration exchange');
	is($m && $m->{routing_key}, 's015_regdef',
		'NULL routing key: the table\'s bare name');

	($m) = @{ take('S015 Mixed', 1, 'table in another schema, quoted name') };
	is($m && $m->{exchange}, '', 'default exchange');
	is($m && $m->{routing_key}, 'S015 Mixed',
		'routing key: the bare table name, unquoted, no schema');
	is($m && body_json($m)->{v}, 'mixed', 'schema-qualified table: the row');
}
drained('s015_regx', 'registration exchange');
drained('s015_regdef', 'registration exchange, default routing key');
drained('"Other015"."S015 Mixed"', 'table in another schema');

# --- mandatory => true and an unroutable row ---------------------------------------

my $failed0 = $node->safe_psql('postgres', 'SELECT failed FROM signalbus_status');
$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s015_mand (routing_key, tag) VALUES (NULL, 'routable-1');
	INSERT INTO s015_mand (routing_key, tag) VALUES ('q015-nowhere', 'unroutable');
	INSERT INTO s015_mand (routing_key, tag) VALUES ('q015_mand', 'routable-2');
	COMMIT;
	INSERT INTO s015_nomand (routing_key, tag) VALUES ('q015-nowhere', 'dropped');
	INSERT INTO s015_nomand (routing_key, tag) VALUES (NULL, 'nomand-ok');
});
{
	my $msgs = take('q015_mand', 2, 'mandatory: the routable rows');
	is_deeply([ sort map { body_json($_)->{tag} } @$msgs ],
		[qw(routable-1 routable-2)], 'mandatory: the routable rows are sent')
	  or diag show($msgs);
	# failed counts every failed attempt: wait for two, so the row has been
	# retried (by a sweep) at least once and is still kept
	ok(wait_for_sql($node,
			"SELECT failed >= $failed0 + 2 FROM signalbus_status", 't'),
		'mandatory: signalbus_status.failed increases (first attempt and a retry)');
	is($node->safe_psql('postgres',
			q{SELECT string_agg(tag, ',') FROM s015_mand}),
		'unroutable',
		'mandatory: the unroutable row is not deleted (still pending)');
	is($node->safe_psql('postgres',
			q{SELECT pending FROM signalbus_pending WHERE signal = 's015_mand'::regclass}),
		'1', 'mandatory: signalbus_pending shows it');
	is(queue_length('q015_mand'), 0, 'mandatory: the returned message was not delivered');

	# without mandatory the broker drops an unroutable message and confirms it
	my ($ok) = @{ take('q015_nomand', 1, 'not mandatory') };
	is($ok && body_json($ok)->{tag}, 'nomand-ok', 'not mandatory: routable row sent');
	drained('s015_nomand', 'not mandatory: the unroutable row counts as sent');
}

$node->stop;
done_testing();
