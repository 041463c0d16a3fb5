"""BALANCERS (imported explicitly to register them): none,
agm, amco, atf, cml, gblend, greedy, inforeg, lfm, mbsd, mla, mmpareto, ogm-ge, opm, pmr, reconboost, relearn, remix,
umt, valuate; and the fusions that methods bring with them: mmtm (Greedy's, :mod:`mmvid.balance.mmtm`) and shared
(MLA's and ReconBoost's, :mod:`mmvid.balance.shared_head`)."""

from mmvid.balance import (  # noqa: F401
    agm,
    amco,
    atf,
    cml,
    gblend,
    greedy,
    inforeg,
    lfm,
    mbsd,
    mla,
    mmpareto,
    mmtm,
    ogm_ge,
    opm,
    pmr,
    reconboost,
    relearn,
    remix,
    shared_head,
    umt,
    valuate,
)
from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS


@BALANCERS.register("none")
class NoBalance(Balancer):
    """No balancing."""

    min_modalities = 1
