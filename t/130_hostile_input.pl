
# Hostile input to the row -> message mapping.  A seeded, reproducible,
# time-bounded random test: rows whose special columns hold hostile values
# (headers nested thousands deep, huge arrays, keys over 255 bytes, numbers
# beyond int64 or with many decimals, empty strings, control characters,
# 10 MB bodies, every special column NULL or wrong-valued) go through the
# worker (signalbus.max_attempts = 1) and through signalbus_flush() in a
# backend.  The server never crashes; the worker sends each row or sets it
# aside in signalbus_dead_letters with a reason; a flush sends each row or
# leaves it in place, and never fails as a whole because of one row.  Rows
# whose values are plainly valid must arrive with exactly the mapped
# message; rows with plainly invalid values must be set aside.
#
# Replay a run with SB_FUZZ_SEED=<seed> (printed as a note); the number of
# inputs tried is printed too.  Targeted cases first, so that a failure
# names its cause.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Encode qw(encode_utf8 decode_utf8);
use JSON::PP;
use List::Util qw(sum max);
use POSIX qw(floor);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $SEED = $ENV{SB_FUZZ_SEED} // 130;
my $INSERT_SECONDS = $ENV{SB_FUZZ_SECONDS} // 8;    # time for generating rows
my $MAX_ROWS = 900;
my $FLUSH_ROWS = 150;
srand($SEED);
note "seed $SEED (replay with SB_FUZZ_SEED=$SEED)";

my $EX = '130.fx';         # topic exchange of the worker's tables, '#' -> $Q
my $Q = '130.all';
my $EXF = '130.fxf';       # the same for database fl (signalbus_flush)
my $QF = '130.fl';
my $EXB = '130.big';       # direct exchange for 10 MB bodies
my $QB = '130.big';
my $QT = '130.targeted';
my $RK = '130.rk';         # the registrations' routing key
my $FRAME = 131072;        # frame_max: a content header must fit in one frame

my $node = new_node(
	'hostile',
	init => { extra => [ '--encoding=UTF8', '--locale=C' ] },
	flush_interval => '200ms',
	'signalbus.max_backoff' => '1s',
	'signalbus.max_attempts' => 1,
	conf => [ 'max_stack_depth = 6MB' ]);
$node->start;
declare_exchange($EX, 'topic');
declare_exchange($EXF, 'topic');
declare_exchange($EXB, 'direct');
declare_queue($Q, [ $EX, '#' ]);
declare_queue($QF, [ $EXF, '#' ]);
declare_queue($QB, [ $EXB, $QB ]);
declare_queue($QT);

my $COLUMNS = q{
	seq int NOT NULL,
	exchange text, routing_key text, headers jsonb,
	content_type text, content_encoding text, correlation_id text, reply_to text,
	expiration text, message_id text, type text, user_id text, app_id text,
	delivery_mode int, priority int, "timestamp" timestamptz};
my %BODY = (fz_b => 'bytea', fz_t => 'text', fz_j => 'jsonb', fz_n => undef);
my @TABLES = sort keys %BODY;

$node->safe_psql('postgres', 'CREATE DATABASE fl');
for my $db (qw(postgres fl))
{
	my $ex = $db eq 'fl' ? $EXF : $EX;
	my $sql = 'CREATE EXTENSION signalbus;';
	for my $t (@TABLES)
	{
		my $body = defined $BODY{$t} ? "body $BODY{$t}" : 'payload text';
		$sql .= "CREATE TABLE $t (id bigserial PRIMARY KEY, $COLUMNS, $body);
			SELECT signalbus_register('$t', exchange => '$ex', routing_key => '$RK');";
	}
	$node->safe_psql($db, $sql);
}
$node->safe_psql('postgres', qq{
	CREATE TABLE tg (id bigserial PRIMARY KEY, v text, headers jsonb);
	SELECT signalbus_register('tg', routing_key => '$QT');
});

sub worker_state
{
	return $node->safe_psql('postgres',
		"SELECT state || ' | ' || coalesce(last_error, '') FROM signalbus_status WHERE database = 'postgres'");
}

# ---------------------------------------------------------------------------
# targeted cases (table tg, worker): each hostile row is set aside (or
# sent), and the ordinary row committed after it is not held back
# ---------------------------------------------------------------------------
sub targeted
{
	my ($name, $headers_sql, $expect) = @_;    # $expect: 'dead', 'sent' or 'either'
	$node->safe_psql('postgres', 'DELETE FROM tg; DELETE FROM signalbus_dead_letters');
	declare_queue($QT);
	my $ids = $node->safe_psql('postgres',
		"INSERT INTO tg (v, headers) VALUES ('hostile', $headers_sql), ('after', '{\"ok\": 1}') RETURNING id");
	my ($bad, $after) = split /\n/, $ids;
	my $resolved = wait_for_sql($node, 'SELECT count(*) FROM tg', '0', 4);
	ok($resolved, "targeted, $name: resolved (sent or set aside) within 4 s")
	  or diag('worker: ' . worker_state());
	my $msgs = get_messages($QT, timeout => 1);
	my %got = map { body_json($_)->{v} => 1 } @$msgs;
	ok($got{after}, "targeted, $name: the row after it was sent");
	my $dead = $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(error, '; '), '') FROM signalbus_dead_letters WHERE (\"row\"->>'id')::bigint = $bad");
	if ($expect eq 'dead')
	{
		like($dead, qr/\S/, "targeted, $name: set aside with a reason ($dead)");
		ok(!$got{hostile}, "targeted, $name: not sent");
	}
	elsif ($expect eq 'sent')
	{
		ok($got{hostile}, "targeted, $name: sent");
		is($dead, '', "targeted, $name: not dead-lettered");
	}
	else
	{
		ok(($got{hostile} xor $dead ne ''), "targeted, $name: either sent or set aside with a reason")
		  or diag("sent: " . ($got{hostile} ? 'yes' : 'no') . ", dead letter: '$dead'");
	}
	like(worker_state(), qr/^(idle|sending) \| /, "targeted, $name: the worker is not backing off")
	  or diag('worker: ' . worker_state());
	$node->safe_psql('postgres', 'DELETE FROM tg');    # never leave a row that blocks the rest
	return;
}

targeted('headers larger than one AMQP frame (20000-element array)',
	q{jsonb_build_object('big', (SELECT jsonb_agg(g) FROM generate_series(1, 20000) g))}, 'dead');
targeted('a 200 kB header string', q{jsonb_build_object('s', repeat('x', 200000))}, 'dead');
targeted('header number 1e400 (beyond double)', q{'{"n": 1e400}'}, 'either');
targeted('header number -1e400', q{'{"n": -1e400}'}, 'either');
targeted('header key of 255 bytes', q{jsonb_build_object(repeat('k', 255), 1)}, 'sent');
targeted('header key of 256 bytes', q{jsonb_build_object(repeat('k', 256), 1)}, 'dead');
targeted('header key of 128 two-byte characters (256 bytes)', q{jsonb_build_object(repeat(chr(233), 128), 1)}, 'dead');
targeted('headers nested 5000 deep', q{(repeat('{"a":', 5000) || '1' || repeat('}', 5000))::jsonb}, 'dead');
targeted('headers an array', q{'[1, 2]'}, 'dead');
targeted('headers a JSON null', q{'null'}, 'dead');

# ---------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------
sub chance { return rand() < $_[0]; }
sub rint { my ($a, $b) = @_; return $a + int(rand($b - $a + 1)); }
sub pick { return $_[ int(rand(@_)) ]; }

sub rand_char
{
	my $r = rand();
	return chr(rint(0x20, 0x7e)) if $r < 0.45;
	return chr(pick(1 .. 31, 127)) if $r < 0.58;
	return chr(rint(0xa0, 0x3ff)) if $r < 0.70;
	return chr(rint(0x4e00, 0x9fff)) if $r < 0.80;
	return chr(rint(0x1f300, 0x1faff)) if $r < 0.90;
	return chr(pick(0x2028, 0x2029, 0xfeff, 0xfffd, 0xffff, 0x10ffff, 0x22, 0x5c, 0x27, 0x25, 0x7b, 0x7d));
}

sub rand_str
{
	my ($max) = @_;
	return '' if chance(0.15);
	return join('', map { rand_char() } 1 .. rint(1, $max));
}
sub nbytes { return length(encode_utf8($_[0])); }

# SQL literals (any content, through hex)
sub sql_text
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	return "convert_from('\\x" . unpack('H*', encode_utf8($s)) . "'::bytea, 'UTF8')";
}
sub sql_bytea { my ($b) = @_; return "'\\x" . unpack('H*', $b) . "'::bytea"; }

# JSON trees: [num => text], [str => s], [bool => 0|1], [null], [obj => [[k, v], ...]], [arr => [v, ...]]
my $INT64_MAX = '9223372036854775807';

sub is_int64
{
	my ($t) = @_;
	return 0 unless $t =~ /^-?\d+$/;
	(my $d = $t) =~ s/^-//;
	$d =~ s/^0+(?=\d)//;
	return 1 if length($d) < 19;
	return 0 if length($d) > 19;
	return $t =~ /^-/ ? $d le '9223372036854775808' : $d le $INT64_MAX;
}

sub json_str
{
	my ($s) = @_;
	$s =~ s/(["\\])/\\$1/g;
	$s =~ s/([\x00-\x1f\x7f])/sprintf('\\u%04x', ord($1))/ge;
	return "\"$s\"";
}

sub tree_json
{
	my ($n) = @_;
	my $k = $n->[0];
	return $n->[1] if $k eq 'num';
	return json_str($n->[1]) if $k eq 'str';
	return $n->[1] ? 'true' : 'false' if $k eq 'bool';
	return 'null' if $k eq 'null';
	return '{' . join(',', map { json_str($_->[0]) . ':' . tree_json($_->[1]) } @{ $n->[1] }) . '}'
	  if $k eq 'obj';
	return '[' . join(',', map { tree_json($_) } @{ $n->[1] }) . ']';
}

# the size of a value in an AMQP field table, and some facts about it
sub tree_facts
{
	my ($n, $depth, $f) = @_;
	my $k = $n->[0];
	$f->{depth} = $depth if $depth > ($f->{depth} // 0);
	if ($k eq 'num')
	{
		$f->{huge_double} = 1 if !is_int64($n->[1]) && abs(0 + $n->[1]) == 9**9**9;
		return 9;
	}
	return 5 + nbytes($n->[1]) if $k eq 'str';
	return 2 if $k eq 'bool';
	return 1 if $k eq 'null';
	if ($k eq 'obj')
	{
		my $size = 5;
		for my $e (@{ $n->[1] })
		{
			my $kl = nbytes($e->[0]);
			$f->{long_key} = 1 if $kl > 255;
			$f->{empty_key} = 1 if $kl == 0;
			$f->{cc} = 1 if $e->[0] eq 'CC' || $e->[0] eq 'BCC';
			$size += 1 + $kl + tree_facts($e->[1], $depth + 1, $f);
		}
		return $size;
	}
	my $size = 5;
	$size += tree_facts($_, $depth + 1, $f) for @{ $n->[1] };
	return $size;
}

sub rand_number
{
	my $r = rand();
	return rint(-1000, 1000) if $r < 0.35;
	return pick($INT64_MAX, '-9223372036854775808', '9223372036854775808', '-9223372036854775809',
		'18446744073709551616', '123456789012345678901234567890', '-0', '0.0', '1.0', '1e2', '-1E-2')
	  if $r < 0.6;
	return '0.' . join('', map { rint(0, 9) } 1 .. rint(20, 60)) if $r < 0.75;
	return pick('1e308', '-1.7976931348623157e308', '2.2250738585072014e-308', '5e-324', '1e-400')
	  if $r < 0.9;
	return pick('1e400', '-1e400', '1' . ('0' x 400));
}

# Never an empty key: RabbitMQ takes it, but librabbitmq (hence amqp-dump,
# and any consumer built on it) cannot decode a table holding one ("invalid
# parameter"), so such a message could not be checked here.
sub rand_key
{
	my $r = rand();
	return pick('k', 'x-match', 'content-type', 'a.b', '$x', '#', "key\x{1f600}") if $r < 0.3;
	my $k = join('', map { rand_char() } 1 .. rint(1, 24));
	return $k if $r < 0.97;
	return pick('K' x 255, 'L' x 256, chr(233) x 127, chr(233) x 128, 'CC', 'BCC');
}

sub rand_tree
{
	my ($depth, $budget) = @_;
	my $r = rand();
	$$budget--;
	if ($depth > 6 || $$budget <= 0 || $r < 0.55)
	{
		my $s = rand();
		return [ num => rand_number() ] if $s < 0.35;
		return [ str => rand_str(30) ] if $s < 0.75;
		return [ bool => rint(0, 1) ] if $s < 0.88;
		return ['null'];
	}
	if ($r < 0.8)
	{
		my %seen;
		my @e;
		for (1 .. rint(0, 6))
		{
			my $k = rand_key();
			next if $seen{$k}++ || $k eq '';
			push @e, [ $k, rand_tree($depth + 1, $budget) ];
		}
		return [ obj => \@e ];
	}
	return [ arr => [ map { rand_tree($depth + 1, $budget) } 1 .. rint(0, 6) ] ];
}

# headers: (sql, tree or undef, verdict, reason)
sub gen_headers
{
	my $r = rand();
	return ('NULL', undef, 'ok', '') if $r < 0.30;
	if ($r < 0.36)
	{
		my ($sql, $why) = @{ pick(
				[ q{'[]'}, 'array' ], [ q{'"text"'}, 'string' ], [ q{'42'}, 'number' ],
				[ q{'null'}, 'JSON null' ], [ q{'true'}, 'boolean' ]) };
		return ($sql, undef, 'dead', "headers: $why");
	}
	if ($r < 0.42)
	{
		# nested objects/arrays, from harmless to thousands deep
		my $d = pick(1, 10, 50, 90, 150, 1000, 3000);
		my $arr = chance(0.3);
		my $txt = $arr ? '{"a":' . ('[' x ($d - 1)) . '1' . (']' x ($d - 1)) . '}'
		  : ('{"a":' x $d) . '1' . ('}' x $d);
		return (sql_text($txt) . '::jsonb', undef, $d <= 90 ? 'ok-nocheck' : 'dead',
			"headers: nested $d deep");
	}
	if ($r < 0.47)
	{
		# huge arrays and strings, server-side: too big for one frame or not
		my $n = pick(10, 1000, 5000, 14000, 20000, 100000);
		my $s = pick(100, 10000, 120000, 140000, 500000);
		return chance(0.5)
		  ? ("jsonb_build_object('arr', (SELECT jsonb_agg(g) FROM generate_series(1, $n) g))",
			undef, $n * 9 < 120000 ? 'ok-nocheck' : $n * 9 > 132000 ? 'dead' : 'any', "headers: array of $n")
		  : ("jsonb_build_object('s', repeat('s', $s))", undef,
			$s < 120000 ? 'ok-nocheck' : $s > 132000 ? 'dead' : 'any', "headers: string of $s bytes");
	}
	my $budget = 40;
	my $t = rand_tree(0, \$budget);
	$t = [ obj => [ [ 'v', $t ] ] ] unless $t->[0] eq 'obj';
	my %f;
	my $size = tree_facts($t, 1, \%f);
	my $verdict = 'ok';
	my $why = 'headers: random';
	if ($f{long_key}) { $verdict = 'dead'; $why = 'headers: key over 255 bytes'; }
	elsif ($f{empty_key}) { $verdict = 'any'; $why = 'headers: empty key'; }
	elsif ($f{huge_double}) { $verdict = 'any'; $why = 'headers: number beyond double'; }
	elsif ($f{cc}) { $verdict = 'any'; $why = 'headers: CC/BCC'; }
	elsif ($size > 120000) { $verdict = 'any'; $why = 'headers: large'; }
	return (sql_text(tree_json($t)) . '::jsonb', $t, $verdict, $why);
}

my @TEXT_PROPS = qw(content_type content_encoding correlation_id reply_to expiration
  message_id type user_id app_id);

# one row: (table, sql values hash, expectation)
sub gen_row
{
	my ($seq) = @_;
	my $t = pick(@TABLES);
	my %v = (seq => $seq);
	my %e = (seq => $seq, table => $t, verdict => 'ok', why => [], props => {});
	my $verdict = sub {
		my ($v, $why) = @_;
		$why =~ s/([^\x20-\x7e])/sprintf('\\x{%x}', ord($1))/ge;
		push @{ $e{why} }, $why if $why ne '';
		my %rank = ('ok' => 0, 'ok-nocheck' => 1, 'any' => 2, 'dead' => 3);
		$e{verdict} = $v if $rank{$v} > $rank{ $e{verdict} };
	};
	my $p_null = pick(0.2, 0.6, 0.9);    # how many special columns stay NULL
	my $p_bad = pick(0.02, 0.1, 0.3);    # how often a set column gets a wrong value

	# exchange / routing key
	$e{exchange} = $EX;
	$e{routing_key} = $RK;
	if (chance(0.15))
	{
		my $x = chance($p_bad) ? pick('no.such.exchange', 'x' x 256, "bad\x01\x7f", 'amq.no-such', $EX . ' ')
		  : pick('', $EX);
		$v{exchange} = sql_text($x);
		if ($x eq '')
		{
			$e{exchange} = '';
			$v{routing_key} = sql_text($Q);    # the default exchange delivers to queue $Q
			$e{routing_key} = $Q;
		}
		elsif ($x eq $EX) { }
		else { $verdict->('dead', nbytes($x) > 255 ? 'exchange over 255 bytes' : 'no such exchange'); }
	}
	if (!defined $v{routing_key} && !chance($p_null))
	{
		my $k = chance($p_bad / 3) ? 'r' x 256 : rand_str(pick(5, 40, 85));
		$v{routing_key} = sql_text($k);
		$e{routing_key} = $k;
		$verdict->('dead', 'routing key over 255 bytes') if nbytes($k) > 255;
	}

	# text properties
	for my $p (@TEXT_PROPS)
	{
		next if chance($p_null);
		my $s;
		if ($p eq 'user_id')
		{
			$s = chance($p_bad) ? pick('nobody', '', 'GUEST') : 'guest';
			$verdict->('dead', "user_id '$s'") if $s ne 'guest';
		}
		elsif ($p eq 'expiration')
		{
			$s = chance($p_bad) ? pick('abc', '-1', '1.5', '', ' 5', '1e3', "\x{ff11}\x{ff12}", '99999999999999999999')
			  : pick('600000', '86400000', '2147483647');
			$verdict->($s =~ /^(600000|86400000|2147483647)$/ ? 'ok' : $s =~ /^9+$/ ? 'any' : 'dead',
				"expiration '$s'");
		}
		else
		{
			$s = chance($p_bad / 3) ? 'p' x rint(256, 400) : rand_str(pick(8, 60, 85));
			$verdict->('dead', "$p over 255 bytes") if nbytes($s) > 255;
		}
		$v{$p} = sql_text($s);
		$e{props}{$p} = $s;
	}
	if (!chance($p_null))
	{
		my $d = chance($p_bad) ? pick(0, 3, -1, 255, 2147483647, -2147483648) : pick(1, 2);
		$v{delivery_mode} = $d;
		$e{props}{delivery_mode} = $d;
		$verdict->('dead', "delivery_mode $d") unless $d == 1 || $d == 2;
	}
	if (!chance($p_null))
	{
		my $pr = chance($p_bad) ? pick(-1, 256, 1000, 2147483647, -2147483648) : pick(0, 1, 9, 10, 255, rint(0, 255));
		$v{priority} = $pr;
		$e{props}{priority} = $pr;
		$verdict->('dead', "priority $pr") if $pr < 0 || $pr > 255;
	}
	if (!chance($p_null))
	{
		my $r = rand();
		if ($r >= $p_bad)
		{
			my $sec = rint(0, 253402300799);
			my $us = rint(0, 999999);
			$v{timestamp} = "'epoch'::timestamptz + interval '$sec seconds' + interval '$us microseconds'";
			$e{props}{timestamp} = $sec;
		}
		elsif ($r < $p_bad * 0.6)
		{
			my $x = pick('infinity', '-infinity');
			$v{timestamp} = "'$x'::timestamptz";
			$verdict->('dead', "timestamp $x");
		}
		else
		{
			my $x = pick('1969-12-31 23:59:59.5+00', '1900-01-01+00', '4713-01-01 00:00:00+00 BC');
			$v{timestamp} = "'$x'::timestamptz";
			$verdict->('any', "timestamp $x");
		}
	}

	# headers
	if (!chance($p_null / 2))
	{
		my ($sql, $tree, $hv, $why) = gen_headers();
		$v{headers} = $sql;
		$e{headers} = $tree;
		$e{headers_set} = $sql ne 'NULL';
		$verdict->($hv, $why);
	}

	# body: always carries "fzid:<seq>:" (or the row as JSON carries the seq)
	my $tok = "fzid:$seq:";
	my $bt = $BODY{$t};
	if (!defined $bt)
	{
		$v{payload} = sql_text(rand_str(pick(10, 200, 3000)));
		$e{body} = [ row => $seq ];
	}
	elsif (chance(0.2))
	{
		$e{body} = [ row => $seq ];    # NULL body: the row as JSON
	}
	elsif ($bt eq 'bytea')
	{
		my $b = $tok . join('', map { chr(int(rand(256))) } 1 .. pick(0, 1, 50, 2000));
		$v{body} = sql_bytea($b);
		$e{body} = [ bytes => $b ];
	}
	elsif ($bt eq 'text')
	{
		my $s = $tok . rand_str(pick(1, 100, 3000));
		$v{body} = sql_text($s);
		$e{body} = [ text => $s ];
	}
	else
	{
		my $budget = 30;
		my $tree = rand_tree(0, \$budget);
		my $js = pick(
			'[' . json_str($tok) . ',' . tree_json($tree) . ']',
			'{"fzid":' . json_str($tok) . ',"x":' . tree_json($tree) . '}',
			json_str($tok . rand_str(50)),
			'[' . json_str($tok) . ',' . ('[' x 2000) . (']' x 2000) . ']');
		$v{body} = sql_text($js) . '::jsonb';
		$e{body} = [ json => $tok ];
	}

	# 'ok-nocheck': valid, but the headers (made server-side) are not compared
	if ($e{verdict} eq 'ok-nocheck')
	{
		$e{verdict} = 'ok';
		$e{nocheck_headers} = 1;
	}
	my @cols = sort keys %v;
	my $sql = "INSERT INTO $t (" . join(', ', map { qq{"$_"} } @cols) . ') VALUES ('
	  . join(', ', map { $v{$_} } @cols) . ");\n";
	return ($sql, \%e);
}

# ---------------------------------------------------------------------------
# checking what arrived
# ---------------------------------------------------------------------------
my $JSON_BODY = JSON::PP->new->utf8->allow_nonref->max_depth(100000);

sub msg_seq
{
	my ($m) = @_;
	my $b = defined $m->{body_hex} ? pack('H*', $m->{body_hex}) : encode_utf8($m->{body});
	return ($1, $b) if $b =~ /^\{"id":\d+,"seq":(\d+)/;
	return ($1, $b) if $b =~ /fzid:(\d+):/;
	return (undef, $b);
}

sub num_eq
{
	my ($got, $text) = @_;
	my $want = 0 + $text;
	if ($want == 9**9**9 || $want == -9**9**9) { return !defined $got; }
	return 0 unless defined $got && !ref $got;
	return 1 if $got == $want;
	return abs($got - $want) <= 1e-12 * max(abs($got), abs($want));
}

# compare an AMQP header value (as amqp-dump printed it) with the tree
sub tree_eq
{
	my ($got, $n, $path) = @_;
	my $k = $n->[0];
	if ($k eq 'num') { return num_eq($got, $n->[1]) ? '' : "$path: number $n->[1] arrived as " . ($got // 'null'); }
	if ($k eq 'str')
	{
		return (defined $got && !ref $got && $got eq $n->[1]) ? '' : "$path: string differs";
	}
	if ($k eq 'bool')
	{
		return (JSON::PP::is_bool($got) && (!!$got == !!$n->[1])) ? '' : "$path: boolean differs";
	}
	if ($k eq 'null') { return defined $got ? "$path: void arrived as a value" : ''; }
	if ($k eq 'obj')
	{
		return "$path: not a table" unless ref $got eq 'HASH';
		my %want = map { $_->[0] => $_->[1] } @{ $n->[1] };
		return "$path: keys differ" unless join("\0", sort keys %$got) eq join("\0", sort keys %want);
		for my $key (sort keys %want)
		{
			my $d = tree_eq($got->{$key}, $want{$key}, "$path/$key");
			return $d if $d ne '';
		}
		return '';
	}
	return "$path: not an array" unless ref $got eq 'ARRAY';
	return "$path: array length differs" unless @$got == @{ $n->[1] };
	for my $i (0 .. $#$got)
	{
		my $d = tree_eq($got->[$i], $n->[1][$i], "$path\[$i]");
		return $d if $d ne '';
	}
	return '';
}

# what is wrong with message $m for expectation $e ('' if nothing)
sub check_message
{
	my ($m, $e, $bytes) = @_;
	my @bad;
	push @bad, "exchange '$m->{exchange}' (expected '$e->{exchange}')" if $m->{exchange} ne $e->{exchange};
	push @bad, 'routing key differs' if $m->{routing_key} ne $e->{routing_key};
	my $p = $m->{properties};
	my ($bk, $bv) = @{ $e->{body} };
	my $ct = $e->{props}{content_type}
	  // (($bk eq 'row' || $bk eq 'json') ? 'application/json' : undef);
	for my $prop (@TEXT_PROPS)
	{
		my $want = $prop eq 'content_type' ? $ct : $e->{props}{$prop};
		my $got = $p->{$prop};
		push @bad, "$prop differs"
		  if (defined $want xor defined $got) || (defined $want && $want ne $got);
	}
	push @bad, 'delivery_mode differs' if ($p->{delivery_mode} // -1) != ($e->{props}{delivery_mode} // 2);
	push @bad, 'priority differs' if ($p->{priority} // -1) != ($e->{props}{priority} // -1);
	push @bad, 'timestamp differs' if ($p->{timestamp} // -1) != ($e->{props}{timestamp} // -1);
	if ($e->{headers_set} && !$e->{nocheck_headers})
	{
		my $d = tree_eq($p->{headers}, $e->{headers}, 'headers');
		push @bad, $d if $d ne '';
	}
	push @bad, 'headers present' if !$e->{headers_set} && exists $p->{headers};
	if ($bk eq 'bytes') { push @bad, 'body differs' if $bytes ne $bv; }
	elsif ($bk eq 'text') { push @bad, 'body differs' if $bytes ne encode_utf8($bv); }
	elsif ($bk eq 'json') { push @bad, 'body not the JSON' unless index($bytes, $bv) >= 0 && eval { $JSON_BODY->decode($bytes); 1 }; }
	else
	{
		my $row = eval { $JSON_BODY->decode($bytes) };
		push @bad, 'body is not the row as JSON' unless ref $row eq 'HASH' && $row->{seq} == $bv;
	}
	return join('; ', @bad);
}

# read every message in $q (for at most 10 s): seq => [messages]
sub drain
{
	my ($q) = @_;
	my %by;
	my $unknown = 0;
	my $deadline = time + 10;
	while (time < $deadline)
	{
		my $msgs = get_messages($q, timeout => 1);
		last unless @$msgs;
		for my $m (@$msgs)
		{
			my ($seq, $bytes) = msg_seq($m);
			if (defined $seq) { push @{ $by{$seq} }, [ $m, $bytes ]; }
			else { $unknown++; }
		}
	}
	return (\%by, $unknown);
}

# ---------------------------------------------------------------------------
# the worker run
# ---------------------------------------------------------------------------
$node->safe_psql('postgres', 'DELETE FROM signalbus_dead_letters');
my %exp;
my $seq = 0;
my $t_start = time;
my $big_rows = 0;
{
	# four 10 MB bodies, to their own queue (counted, not read)
	my $big = "SELECT 0, '$EXB', '$EXB',";
	$node->safe_psql('postgres', qq{
		INSERT INTO fz_b (seq, exchange, routing_key, body) $big decode(repeat('00ff7f80', 2621440), 'hex');
		INSERT INTO fz_t (seq, exchange, routing_key, body) $big repeat(chr(233) || E'\\n\\t"', 2097152);
		INSERT INTO fz_j (seq, exchange, routing_key, body) $big to_jsonb(repeat('x', 10485760));
		INSERT INTO fz_n (seq, exchange, routing_key, payload) $big repeat('y', 10485760);
	});
	$big_rows = 4;
}
while ($seq < $MAX_ROWS && time - $t_start < $INSERT_SECONDS)
{
	my $sql = "BEGIN;\n";
	for (1 .. 30)
	{
		$seq++;
		my ($ins, $e) = gen_row($seq);
		$exp{$seq} = $e;
		$sql .= $ins;
	}
	$sql .= "COMMIT;\n";
	my ($ret, $out, $err) = $node->psql('postgres', $sql);
	die "inserting hostile rows failed (a bug of this test): $err" if $ret != 0;
}
my $tried = $seq + $big_rows;
note "worker: $tried hostile rows inserted in " . sprintf('%.1f', time - $t_start) . ' s';

# wait until every row is sent or set aside (at most 20 s, and no longer
# than 6 s without progress)
my $pending_sql = 'SELECT ' . join(' + ', map { "(SELECT count(*) FROM $_)" } @TABLES);
{
	my ($last, $last_change, $deadline) = (-1, time, time + 20);
	my $pending;
	while (1)
	{
		$pending = $node->safe_psql('postgres', $pending_sql);
		last if $pending == 0 || time > $deadline;
		($last, $last_change) = ($pending, time) if $pending != $last;
		last if time - $last_change > 6;
		sleep 0.2;
	}
	is($pending, 0, "worker: all $tried hostile rows were sent or set aside within the time bound")
	  or diag("still pending: $pending; worker: " . worker_state());
}

# freeze the state: the worker may no longer reach the broker
$node->append_conf('postgresql.conf', "signalbus.amqp_url = 'amqp://guest:guest\@localhost:1/%2f'");
$node->reload;
ok(wait_for_sql($node, "SELECT state = 'backoff' FROM signalbus_status WHERE database = 'postgres'", 't', 10),
	'worker stopped for the count (broker URL pointed at a closed port)');

my $bigq = broker_ctl('-q', 'list_queues', 'name', 'messages', 'message_bytes');
my ($big_n, $big_bytes) = $bigq =~ /^\Q$QB\E\s+(\d+)\s+(\d+)/m;
is($big_n, 4, 'worker: the four 10 MB bodies arrived');
cmp_ok($big_bytes // 0, '>=', 4 * 10485760, 'worker: ... whole');
declare_queue($QB, [ $EXB, $QB ]);    # purge them

my ($by, $unknown) = drain($Q);
is($unknown, 0, 'worker: every message can be told which row it came from');
my %dead = map { split /\|/, $_, 2 } grep { length } split /\n/,
  $node->safe_psql('postgres',
	q{SELECT ("row"->>'seq') || '|' || coalesce(nullif(translate(error, E'\n\r', '  '), ''), '(no reason)') FROM signalbus_dead_letters});
my $big_dead = $node->safe_psql('postgres', q{SELECT count(*) FROM signalbus_dead_letters WHERE ("row"->>'seq')::int = 0});
is($big_dead, '0', 'worker: no 10 MB body was set aside');
delete $dead{0};

my (%class, @lost, @both, @ok_dead, @dead_sent, @wrong, @noreason);
my $dups = 0;
for my $s (sort { $a <=> $b } keys %exp)
{
	my $e = $exp{$s};
	my $got = $by->{$s};
	my $d = $dead{$s};
	$dups += @$got - 1 if $got && @$got > 1;
	my $what = "#$s $e->{table} [" . join(', ', @{ $e->{why} }) . ']';
	if (!$got && !defined $d) { push @lost, $what; next; }
	if ($got && defined $d) { push @both, "$what: $d"; next; }
	if (defined $d)
	{
		$class{dead}++;
		push @noreason, $what if $d eq '(no reason)';
		push @ok_dead, "$what: $d" if $e->{verdict} eq 'ok';
		next;
	}
	$class{sent}++;
	push @dead_sent, $what if $e->{verdict} eq 'dead';
	if ($e->{verdict} eq 'ok')
	{
		my $bad = check_message($got->[0][0], $e, $got->[0][1]);
		push @wrong, "$what: $bad" if $bad ne '';
	}
}
sub show { my ($list) = @_; my @l = @$list; return join("\n", @l[ 0 .. ($#l < 14 ? $#l : 14) ]) . (@l > 15 ? "\n... (" . scalar(@l) . ' in all)' : ''); }
note sprintf('worker: %d rows: %d sent, %d set aside, %d duplicates', scalar(keys %exp),
	$class{sent} // 0, $class{dead} // 0, $dups);
if (!is(scalar @lost, 0, 'worker: every row was either sent or set aside'))
{
	my %why;
	for my $l (@lost) { $why{$_}++ for ($l =~ /\[(.*)\]/ ? (split /, /, $1) : ()); }
	diag("rows neither sent nor set aside, by cause:\n"
		  . join("\n", map { "  $why{$_} x $_" } sort { $why{$b} <=> $why{$a} } keys %why)
		  . "\n(" . scalar(@lost) . " rows; the rest had no special value: blocked behind the others)\n"
		  . show(\@lost));
}
is(scalar @both, 0, 'worker: no row was both sent and set aside') or diag(show(\@both));
is(scalar @noreason, 0, 'worker: every row set aside has a reason') or diag(show(\@noreason));
is(scalar @ok_dead, 0, 'worker: no valid row was set aside') or diag(show(\@ok_dead));
is(scalar @dead_sent, 0, 'worker: no plainly invalid row was sent') or diag(show(\@dead_sent));
is(scalar @wrong, 0, 'worker: every valid row arrived as exactly the mapped message') or diag(show(\@wrong));
cmp_ok($class{sent} // 0, '>', 0, 'worker: rows were sent');
cmp_ok($class{dead} // 0, '>', 0, 'worker: rows were set aside');

# ---------------------------------------------------------------------------
# signalbus_flush() in a backend (database fl, no worker): sends every row
# it can, leaves the others in place, never fails as a whole
# ---------------------------------------------------------------------------
# the broker again, for the flushes
$node->append_conf('postgresql.conf', "signalbus.amqp_url = '" . amqp_url() . "'");
$node->reload;
$node->poll_query_until('fl', 'SHOW signalbus.amqp_url', amqp_url());
my %fexp;
{
	my $sql = "BEGIN;\n";
	for (1 .. $FLUSH_ROWS)
	{
		$seq++;
		my ($ins, $e) = gen_row($seq);
		$e->{exchange} = $EXF if $e->{exchange} eq $EX;
		$e->{routing_key} = $QF if $e->{exchange} eq '';
		# the default exchange's queue, and the explicit exchange, of database fl
		$ins =~ s/\Q@{[ sql_text($Q) ]}\E/@{[ sql_text($QF) ]}/;
		$ins =~ s/\Q@{[ sql_text($EX) ]}\E/@{[ sql_text($EXF) ]}/;
		$fexp{$seq} = $e;
		$sql .= $ins;
	}
	$sql .= "COMMIT;\n";
	my ($ret, $out, $err) = $node->psql('fl', $sql);
	die "inserting hostile rows failed (a bug of this test): $err" if $ret != 0;
	$tried += $FLUSH_ROWS;
}
my @flush_errors;
for my $round (1 .. 3)
{
	my ($out, $err) = ('', '');
	$node->psql('fl', "\\set VERBOSITY verbose\nSELECT signalbus_flush()", stdout => \$out, stderr => \$err);
	push @flush_errors, "round $round: $err" if $err =~ /ERROR/;
}
is(scalar @flush_errors, 0, 'flush: signalbus_flush() never failed because of a hostile row')
  or diag(join("\n", @flush_errors));
my ($fby, $funknown) = drain($QF);
my %left = map { $_ => 1 } split /\n/,
  $node->safe_psql('fl', join(' UNION ALL ', map { "SELECT seq FROM $_" } @TABLES));
my (@f_lost, @f_ok_left, @f_dead_sent, @f_wrong);
for my $s (sort { $a <=> $b } keys %fexp)
{
	my $e = $fexp{$s};
	my $got = $fby->{$s};
	my $what = "#$s $e->{table} [" . join(', ', @{ $e->{why} }) . ']';
	if (!$got && !$left{$s}) { push @f_lost, $what; next; }
	if ($left{$s}) { push @f_ok_left, $what if $e->{verdict} eq 'ok'; next; }
	push @f_dead_sent, $what if $e->{verdict} eq 'dead';
	if ($e->{verdict} eq 'ok')
	{
		my $bad = check_message($got->[0][0], $e, $got->[0][1]);
		push @f_wrong, "$what: $bad" if $bad ne '';
	}
}
is(scalar @f_lost, 0, 'flush: no row vanished without its message') or diag(show(\@f_lost));
is(scalar @f_ok_left, 0, 'flush: every valid row was sent') or diag(show(\@f_ok_left));
is(scalar @f_dead_sent, 0, 'flush: no plainly invalid row was sent') or diag(show(\@f_dead_sent));
is(scalar @f_wrong, 0, 'flush: every valid row arrived as exactly the mapped message') or diag(show(\@f_wrong));
is($node->safe_psql('fl', 'SELECT count(*) FROM signalbus_dead_letters'), '0',
	'flush: a backend flush sets nothing aside (rows stay for the worker)');

# ---------------------------------------------------------------------------
# the server survived
# ---------------------------------------------------------------------------
note "hostile inputs tried: $tried (seed $SEED)";
cmp_ok($tried, '>=', 300, "at least 300 hostile inputs were tried ($tried)");
unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'no server process crashed');
like($node->safe_psql('postgres', "SELECT state FROM signalbus_status WHERE database = 'postgres'"),
	qr/^(idle|sending|backoff)$/, 'the worker is alive');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server answers');

$node->stop;
done_testing();
