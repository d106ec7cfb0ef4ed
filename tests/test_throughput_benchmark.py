"""benchmarks/throughput.py --precisions auto: each case runs in the precision ddpm train chooses, and says which."""

from __future__ import annotations

import throughput

import ddpm.train.fit as fit_module


def test_auto_runs_each_case_in_ddpm_trains_choice(monkeypatch, capsys):
    assert throughput.choose_precision is fit_module.choose_precision  # the library's decision, not a copy
    chosen = []

    def choose(net, device, micro, ckpt, bf16, lines):
        chosen.append((net.config.image_size, micro))
        lines.append("precision: float32, bf16 is 0.71x as fast here (a CPU; timed on this network once; ...)")
        return False, 0.1

    ran = []

    def bench(preset, channels, size, tb, sb, seconds, bf16=False, compile=False):
        ran.append((preset, bf16))
        return dict(params=1e6, gflops=0.1, train_ips=10.0, step_ms=5.0, train_gflops=3.0, sample_eps=20.0,
                    sample_gflops=2.0)  # fmt: skip

    monkeypatch.setattr(throughput, "choose_precision", choose)
    monkeypatch.setattr(throughput, "bench_case", bench)
    monkeypatch.setattr(throughput, "measured_peak", lambda seconds, dtype=None: (100.0, 50.0))
    throughput.main(["--cases", "tiny:1:8:16:16", "--precisions", "auto", "--seconds", "0.1"])
    out = capsys.readouterr().out
    assert chosen == [(8, 16)] and ran == [("tiny", False)]  # the training batch is what was timed
    assert "| tiny | 1×8×8 | auto: float32, bf16 is 0.71x as fast |" in out
    # both peaks are measured, since the choice may be either
    assert "measured float32 peak" in out and "measured bf16 peak" in out
