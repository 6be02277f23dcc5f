"""Where RabbitMQ's own work goes: the share of its reductions by kind of process.

    python -m bench.rabbit_top                 # a 6 s window, now
    python -m bench.rabbit_top --seconds 10 --channels

Run it while a benchmark stage (or real traffic) is under way, on the broker's machine,
as a user that may call ``rabbitmqctl`` (root here). Reductions are the Erlang VM's
unit of work: not seconds, but the shares show which part of the broker is busy. The
``rabbitmqctl`` call itself costs about a second of CPU, so it runs once, around the
whole window; the process taking the snapshots is left out.

Groups: every quorum queue's Raft server together as ``quorum queues``, one per other
registered process (``ra_log_wal``: the quorum queues' shared write-ahead log), one
per kind of unregistered process (``rabbit_channel``, ``rabbit_reader``,
``rabbit_writer``, ...). ``--channels`` adds a line per AMQP channel, named by
its connection, since channels are where per-message routing, confirms and
deliveries are handled.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

_SNIPPET = r"""
Me = self(),
Snap = fun() -> maps:from_list([{P, R} || P <- erlang:processes(), P =/= Me,
                                {reductions, R} <- [erlang:process_info(P, reductions)]]) end,
Before = Snap(), timer:sleep(__MS__), After = Snap(),
Diff = [{P, R - maps:get(P, Before, 0)} || {P, R} <- maps:to_list(After)],
Total = max(1, lists:sum([R || {_, R} <- Diff])),
Kind = fun(P) -> case proc_lib:translate_initial_call(P) of
    {ra_server_proc, _, _} -> "quorum queues";
    {M, _, _} -> case erlang:process_info(P, registered_name) of
                     {registered_name, N} when is_atom(N) -> atom_to_list(N);
                     undefined -> "exited";
                     _ -> atom_to_list(M) end;
    _ -> "other" end end,
Add = fun(K, R, Acc) -> maps:update_with(K, fun({S, C}) -> {S + R, C + 1} end, {R, 1}, Acc) end,
Groups = lists:foldl(fun({P, R}, Acc) -> Add(Kind(P), R, Acc) end, #{}, Diff),
Sorted = lists:reverse(lists:keysort(2, [{K, S, C} || {K, {S, C}} <- maps:to_list(Groups)])),
io:format("reductions ~b in __MS__ ms~n", [Total]),
[io:format("~5.1f%  ~s (~b)~n", [100 * S / Total, K, C])
 || {K, S, C} <- lists:sublist(Sorted, __TOP__)],
case __CHANNELS__ of
    true ->
        [case catch rabbit_channel:info(P, [name, consumer_count, confirm]) of
             [{name, Name}, {consumer_count, Cs}, {confirm, Cf}] ->
                 io:format("~5.1f%  channel ~s consumers=~b confirm=~p~n",
                           [100 * R / Total, Name, Cs, Cf]);
             _ -> ok end
         || {P, R} <- lists:reverse(lists:keysort(2, Diff)),
            proc_lib:translate_initial_call(P) =:= {rabbit_channel, init, 1}];
    false -> ok end,
ok.
"""


def snippet(seconds: float, top: int, channels: bool) -> str:
    """The Erlang expression ``rabbitmqctl eval`` runs."""
    return (_SNIPPET.replace("__MS__", str(int(seconds * 1000))).replace("__TOP__", str(top))
            .replace("__CHANNELS__", "true" if channels else "false"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rabbit_top",
                                description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0, help="window (default 6)")
    p.add_argument("--top", type=int, default=15, help="groups listed (default 15)")
    p.add_argument("--channels", action="store_true", help="a line per AMQP channel")
    args = p.parse_args(argv)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        p.error("rabbitmqctl is not on PATH: run this on the broker's machine")
    done = subprocess.run([ctl, "eval", snippet(args.seconds, args.top, args.channels)],
                          capture_output=True, text=True, timeout=args.seconds + 60)
    if done.returncode != 0:
        print(done.stdout + done.stderr)
        return done.returncode
    print(done.stdout.rstrip().removesuffix("ok").rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
