"""The recipes of the distillation study on the Fashion-MNIST teacher (benchmarks/fashion/study.py): each a set of
DistillConfig keys over BASE, named after what it changes, with the study setting that is not a DistillConfig key
(a global batch). Why each exists is said beside it.
"""

from __future__ import annotations

# The quickstart's small-model settings (student lr 1e-4: a 3M-parameter UNet needs a larger step than the
# paper's 1e-6 for 865M; EMA 0.99 for a few thousand steps) with the paper's LoRA (rank 64, alpha 108).
BASE = dict(num_steps=4, spacing="leading", lambda_kl=0.1, student_lr=1e-4, fake_score_lr=1e-3, lora_rank=64,
            lora_alpha=108.0, ema_decay=0.99)
# The best recipe (full-copy fake score, 5 updates per student update, guidance 2 / 1, x0-error weighting): the
# base of the diversity and stability variants below.
BEST = {"fake_score": "full", "fake_score_lr": 1e-4, "fake_score_updates": 5, "guidance_scale": 2.0,
        "fake_guidance_scale": 1.0, "vsd_weighting": "x0_error"}
# Recipes whose global batch is not the default 8 (a study setting, not a DistillConfig key); --batch-size may not contradict it.
BATCH_SIZES: dict[str, int] = {"full-ttur5-guid2-1-x0err-b32": 32}
RECIPES: dict[str, dict] = {
    "init": {},  # run with --steps 0: the initial student (the teacher's UNet in the TiUE pipeline)
    "paper": {},
    "ttur5": {"fake_score_updates": 5},
    "full": {"fake_score": "full", "fake_score_lr": 1e-4},
    "guid2-1": {"guidance_scale": 2.0, "fake_guidance_scale": 1.0},
    "x0err": {"vsd_weighting": "x0_error"},
    "warmup": {"student_warmup_steps": 200, "fake_score_warmup_steps": 200},
    "full-ttur5-guid2-1": {"fake_score": "full", "fake_score_lr": 1e-4, "fake_score_updates": 5, "guidance_scale": 2.0,
                           "fake_guidance_scale": 1.0},
    "full-ttur5-guid2-1-x0err": BEST,
    # SiD-LSG (Zhou et al. 2024) reports its best COCO FID at guidance 1.5, not 4.5: milder teacher guidance
    # is the usual lever for diversity (recall), which guidance 2 left at 0.085 here.
    "full-ttur5-guid1.5-1-x0err": {**BEST, "guidance_scale": 1.5},
    # The end of that knob: no guidance at all (the conditional teacher's score), the teacher's own distribution,
    # whose recall is the highest of its samplers; guidance 2 -> 1.5 moved the student's test recall 0.085 -> 0.104.
    "full-ttur5-guid1-1-x0err": {**BEST, "guidance_scale": 1.0},
    # Quickstart candidate (about 150 updates): the teacher's best 4-step sampler uses guidance 3 (chosen on
    # validation), so a student distilled at 3 may reach a low FID in fewer updates than at 2.
    "full-ttur5-guid3-1-x0err": {**BEST, "guidance_scale": 3.0},
    # DMD's regression loss on 1024 stored teacher pairs (50-step DDIM at the VSD teacher's guidance): anchors the
    # student's noise-to-image map to the teacher's modes, which VSD's mode seeking alone gives up (docs/method.md).
    **{f"full-ttur5-guid2-1-x0err-reg{w}": {**BEST, "regression_weight": float(w)} for w in ("0.25", "1", "4")},
    # DMD2's GAN term at weights around DMD2's 1e-3 to 1e-2: the discriminator sees the shipped GAN subset of TRAINING
    # images (data/fashion-mnist/README.md), so these rows are marked "uses training images" (docs/method.md).
    **{f"full-ttur5-guid2-1-x0err-gan{w}": {**BEST, "gan_weight": float(w)} for w in ("0.003", "0.01", "0.03")},
    # MSGAN's mode-seeking term (image free): a second sample per prompt, the student paid for the distance between
    # the two. At weight 1 its gradient on the student is about 5x VSD's at the start (measured), so 0.05 and 0.2.
    **{f"full-ttur5-guid2-1-x0err-ms{w}": {**BEST, "mode_seeking_weight": float(w)} for w in ("0.05", "0.2")},
    # SiD's few-step guidance strategies (Zhou, Gu and Wang 2025): the teacher unguided (its most diverse score) and
    # the prompt's pull taken from the fake score instead: its unconditional prediction (Zero-CFG, fake guidance 0)
    # or negative guidance on it (Anti-CFG, -1); image free (docs/method.md, "Keeping the teacher's diversity").
    "full-ttur5-zerocfg-x0err": {**BEST, "guidance_scale": 1.0, "fake_guidance_scale": 0.0},
    "full-ttur5-anticfg1-x0err": {**BEST, "guidance_scale": 1.0, "fake_guidance_scale": -1.0},
    # SiD's student loss (Zhou et al. 2024, alpha 1.2; image free): a Fisher-divergence estimate whose gradient goes
    # through both score networks, where VSD's reverse KL, which seeks modes, holds them fixed (docs/method.md).
    "full-ttur5-guid2-1-x0err-sid": {**BEST, "student_loss": "sid"},
    # At guidance 2 SiD's samples come out oversaturated (seed 1, 600 updates: validation FID 201): its gradient runs
    # through the guided teacher. SiD-LSG (Zhou et al. 2025) finds its best FID at guidance 1.5.
    "full-ttur5-guid1.5-1-x0err-sid": {**BEST, "guidance_scale": 1.5, "student_loss": "sid"},
    # SiD's own recipes train the generator at 1e-5 or below; the study's 1e-4 was tuned for VSD.
    "full-ttur5-guid2-1-x0err-sid-lr2e-5": {**BEST, "student_loss": "sid", "student_lr": 2e-5},
    # Which noise levels the student's collapse comes from: the VSD gradient from t >= 500 only (global layout: which
    # garment, its size) or from t < 500 only (details, sharpened towards the nearest typical image); 20-980 otherwise.
    "full-ttur5-guid2-1-x0err-tmin500": {**BEST, "vsd_t_min": 500},
    "full-ttur5-guid2-1-x0err-tmax499": {**BEST, "vsd_t_max": 499},
    # Further down the same knob: the low-noise half raised test recall 0.085 -> 0.147 at 2000 updates (and cost
    # alignment 0.826 -> 0.748); t <= 299 leaves the layout to the initialisation still more.
    "full-ttur5-guid2-1-x0err-tmax299": {**BEST, "vsd_t_max": 299},
    # Between the two: t <= 749 keeps part of the prompt's pull at high noise (alignment) and drops the top of it.
    "full-ttur5-guid2-1-x0err-tmax749": {**BEST, "vsd_t_max": 749},
    # The low-noise half plus the one other term that raised recall (mode seeking 0.05: +0.053 at 600 updates,
    # with coverage halved): does it add recall on top, and at what cost in coverage?
    "full-ttur5-guid2-1-x0err-tmax499-ms0.05": {**BEST, "vsd_t_max": 499, "mode_seeking_weight": 0.05},
    # The low-noise half with milder guidance (1.5 raised recall with the full range: 0.085 -> 0.104 at 2000 updates).
    "full-ttur5-guid1.5-1-x0err-tmax499": {**BEST, "guidance_scale": 1.5, "vsd_t_max": 499},
    # The low-noise half leaves each sample's layout to the initial student (test recall 0.068), so the layouts stay
    # few. DMD's regression pairs from the teacher's own 4-step sampler at its best guidance (3: test recall 0.289)
    # could give the layouts the teacher's spread: a target the initial student is already near (latent MSE 0.17
    # against 0.68 for the 50-step pairs, which cost FID at 600 updates), while VSD below t = 500 sharpens the
    # details. Measured: it cost validation FID and did not raise recall (docs/method.md).
    **{f"full-ttur5-guid2-1-x0err-tmax499-reg{w}-t4g3": {**BEST, "vsd_t_max": 499, "regression_weight": float(w),
                                                        "regression_teacher_steps": 4, "regression_guidance_scale": 3.0,
                                                        "regression_pairs": 4096} for w in ("0.25", "1")},
    # VSD's pull apart comes from the fake score: where it fits the student's samples tightly, -eps_fake points away
    # from the student's modes. The low-noise half with the fake score trained only where the student's gradient is
    # read (t <= 499, where it was trained over 0-999), or tracking the student faster (learning rate 3e-4, not 1e-4).
    "full-ttur5-guid2-1-x0err-tmax499-fst499": {**BEST, "vsd_t_max": 499, "fake_score_t_max": 499},
    "full-ttur5-guid2-1-x0err-tmax499-flr3e-4": {**BEST, "vsd_t_max": 499, "fake_score_lr": 3e-4},
    # The same for t <= 299, the recipe with the most coverage (test 0.0715, above the 50-step teacher's 0.068). The
    # study's choice at 4000 updates (--steps 4000): FID 111.68, coverage 0.097, recall 0.150 (0.163 at 2000).
    "full-ttur5-guid2-1-x0err-tmax299-fst299": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299},
    # The previous choice, from a regression-only student (STARTS): fitted to 8192 of the teacher's 50-step pairs
    # alone, it follows the teacher's map from noise on noise it never saw (benchmarks/results/pair_fit.md), so its
    # layouts are the teacher's; VSD below t = 300 then sharpens their details. Measured (4000 updates, seeds 1 and
    # 2): test FID 107.69, recall 0.119, coverage 0.119 against 111.68, 0.150 and 0.097 from the teacher's UNet: VSD
    # narrows the layouts.
    "pf8192-full-ttur5-guid2-1-x0err-tmax299-fst299": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299},
    # The same with the regression on the fit's own 8192 pairs kept beside VSD: from the teacher's UNet the pull had to
    # move the map against VSD (reg0.25-reg4 above: recall did not rise); from the fitted start the map already follows
    # the pairs (held-out MSE 0.12), so the pull only has to hold the layouts VSD took within 500 updates.
    # Both were started at 4000 updates on seed 1; reg4 was stopped at 500 (validation FID 185.3, recall 0.571, against
    # reg1's 177.9 and 0.584: worse on FID for no recall), and seed 2 went to reg1.
    # Measured (reg1, 4000 updates, seeds 1 and 2): test FID 142.86, recall 0.302, coverage 0.049: it holds the
    # teacher's recall and the fit's blur (the choice by the rule, D2 missed).
    # Weight 0 (the recipe above) and weight 1 bracket the targets: 107.69 / 0.119 / 0.119 against 142.86 / 0.302 /
    # 0.049 (FID / recall / coverage). Weights 4 and 1 gave the same recall at 500 updates, so the pull is saturated
    # at 1 and the window, if there is one, lies lower: 0.25 (DMD's regression weight) and 0.1 are started on seed 1,
    # the one with the better validation FID among those whose validation recall holds at 500 updates goes on to seed 2.
    # At 500 updates (validation FID / recall; weight 0: 139.6 / 0.286, weight 1: 177.9 / 0.584): weight 0.1 gave
    # 154.3 / 0.391 and weight 0.25 gave 163.9 / 0.451. Neither reached the 50-step teacher's 0.470; 0.25 came
    # nearest, 0.1 had lost most of the start's recall (0.503), so 0.1 was stopped (not recorded) and 0.25 went on.
    # Measured (reg0.25, 4000 updates, seeds 1 and 2): validation recall 0.399 (not chosen by the rule), test FID
    # 126.78, recall 0.258, coverage 0.066: between weights 0 and 1 on both.
    **{f"pf8192-full-ttur5-guid2-1-x0err-tmax299-fst299-reg{w}-pairs8192": {
        **BEST, "vsd_t_max": 299, "fake_score_t_max": 299, "regression_weight": float(w), "regression_pairs": 8192}
       for w in ("0.1", "0.25", "1", "4")},
    # The end of the noise-range knob: t <= 749, 499, 299 gave test recall 0.097, 0.147, 0.158 (0.163 with the fake
    # score there too) at 2000 updates. t <= 199 leaves still more of the layout to the initial map (whose sandal and
    # sneaker layouts are already boot-like, benchmarks/results/class_recall.md): does recall keep rising? Measured
    # (2000 updates, seeds 1 and 2): no, it turns: test recall 0.106 at FID 118.24 (docs/method.md).
    "full-ttur5-guid2-1-x0err-tmax199-fst199": {**BEST, "vsd_t_max": 199, "fake_score_t_max": 199},
    # TiUE's own diversity term on the choice, weighted up tenfold (lambda_kl 1, the paper's 0.1): the KL keeps every
    # predicted noise map near N(0, 1), so the noise z keeps reaching the output. Swept so far only over the full
    # VSD range at 300 updates (kl0, kl1, kl10 below), where weighting it up cost FID; on the low-noise recipe the
    # layout is the initial student's, which the term may keep more of. Measured (2000 updates, seeds 1 and 2): test
    # recall 0.163 as at 0.1, at FID 151.67 against 116.73 and a third of the coverage (docs/method.md).
    "full-ttur5-guid2-1-x0err-tmax299-fst299-kl1": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299, "lambda_kl": 1.0},
    # VSD's only force against collapse is the fake score: -eps_fake points away from where the student's samples
    # already are, as far as the fake score has fitted them. On the choice the fake score is trained only where the
    # gradient is read (t <= 299), 5 updates per student update; twice as many (DMD2's two time-scale rule uses 5 to
    # 10) fits the student's current samples more tightly, so the push apart is the present one, not a lagging one.
    # Measured (2000 updates, seeds 1 and 2): test FID 113.71 against 116.73, recall 0.163 as with 5 (docs/method.md).
    "full-ttur10-guid2-1-x0err-tmax299-fst299": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299,
                                                 "fake_score_updates": 10},
    # An annealed noise schedule (ProlificDreamer, DreamTime): the whole range first, for the layout, then the choice's
    # t <= 299 for the detail. The choice leaves each layout to the initial map, whose sandals and sneakers are
    # boot-like (benchmarks/results/class_recall.md); the whole range moves layouts to the prompt (validation alignment
    # 0.475 -> 0.765 / 0.785 in 300 updates, 0.81 at 1000, full-ttur5-guid2-1-x0err@300 and @2000) but collapses
    # them the longer it runs. So 300 whole-range updates, then 1700 low-noise ones: the same 2000 in all. Measured
    # (seeds 1 and 2): test FID 116.83, recall 0.160, alignment 0.697, the choice's own numbers (docs/method.md).
    "full-ttur5-guid2-1-x0err-anneal300-tmax299-fst299": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299,
                                                          "vsd_t_max_from_step": 300},
    # The guidance knob on the choice (swept so far only over the full range, 1 / 1.5 / 2, and t <= 499, 1.5 / 2):
    # on t <= 499 guidance 2 beat 1.5 on recall (test 0.147 against 0.132), so upwards: 3, the teacher's best 4-step
    # guidance, and 4.5, its best 50-step guidance and the paper's. Sharper low-noise targets may spread the
    # samples' details further apart; the teacher's own recall falls with guidance. Measured (2000 updates, seeds 1
    # and 2): the student's falls too, test recall 0.163 / 0.144 / 0.115 at 2 / 3 / 4.5, alignment 0.697 / 0.796 /
    # 0.865 (docs/method.md).
    **{f"full-ttur5-guid{g}-1-x0err-tmax299-fst299": {**BEST, "guidance_scale": float(g), "vsd_t_max": 299,
                                                      "fake_score_t_max": 299} for g in ("3", "4.5")},
    # The study's choice plus DMD's regression on pairs made from the initial student's own samples
    # (regression_finish_from: its sample from z, noised to t = 481 with z mirrored and finished by the teacher's
    # 50-step DDIM at guidance 2; loopfree.pairs): the low-noise recipe reaches recall 0.138 where its initial
    # student finished by the teacher reaches 0.287 (benchmarks/results/refine_ceiling.md), so the pairs hand it that
    # finish directly. Re-noised with z itself instead of z mirrored (an earlier version of the study, rp481), the
    # finished samples score FID 150.6 and the weight-0.25 screen was stopped at 400 updates (validation FID 173.7
    # against 167.0 for tmax499 at 400; no record kept). Measured, rp481m at 0.25 over 2000 updates: test recall
    # 0.199 against 0.163 without it, at validation FID 154.9 against 143.6, with pairs on the test images' noise;
    # re-measured with pair seeds below 2**32, 0.152 (docs/method.md). Over 4000 updates recall falls back
    # (0.162) as FID (118.91) and coverage (0.065) come back.
    **{f"full-ttur5-guid2-1-x0err-tmax299-fst299-rp481m-reg{w}": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299,
                                                                "regression_weight": float(w), "regression_finish_from": 481}
       for w in ("0.25", "1")},
    # The same with the sample re-noised by its own fresh draw (regression_renoise: fresh), not z mirrored: on the
    # refine ceiling's protocol the initial student finished from t = 481 covers more of the reference images re-noised
    # fresh (coverage 0.082, recall 0.287) than with z mirrored (0.056, 0.302); garments are near-symmetric, so
    # mirrored z still echoes the layout the student drew from z. And from t = 681: more of the teacher's spread.
    # Measured (600-update screens, seed 1): validation FID 163.2 for rp481f (rp481m: 163.0) and 159.8 for rp681f,
    # the best regression screen, so rp681f was run for 2000 updates (docs/method.md): validation FID 149.2 (the
    # choice: 143.6), test recall 0.109 against 0.163 without pairs and 0.152 with rp481m's.
    **{f"full-ttur5-guid2-1-x0err-tmax299-fst299-rp{t}f-reg0.25": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299,
                                                                  "regression_weight": 0.25, "regression_finish_from": t,
                                                                  "regression_renoise": "fresh"}
       for t in (481, 681)},
    # The same pairs compared as 2 x 2 block means (regression_pool 2): rp481m-reg0.25 raised test recall (0.163 ->
    # 0.199, its first measurement) and cost validation FID (143.6 -> 154.9), coverage and alignment, since the
    # full-resolution target carries detail the initial student does not predict from (z, c). Pooled, the pairs hand over the
    # layout only and leave the detail to VSD. Measured (600-update screens, seed 1): validation FID 167.9 at 0.25
    # and 176.1 at 1, against 163.0 and 170.2 compared whole: the layout pull is what costs fidelity, not the
    # detail.
    **{f"full-ttur5-guid2-1-x0err-tmax299-fst299-rp481m-lp2-reg{w}": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299,
                                                                    "regression_weight": float(w), "regression_pool": 2,
                                                                    "regression_finish_from": 481}
       for w in ("0.25", "1")},
    # The teacher's own 50-step pairs (guidance 2, the VSD teacher's), compared as 2 x 2 block means of the 8 x 8
    # latent, on the choice. The choice's recall is lost mostly in layouts (the per-class split: footwear drawn as
    # boots, benchmarks/results/class_recall.md), which t <= 299 leaves to the initial map, and the teacher's layouts
    # are the ones to keep (its 50-step recall at guidance 2: 0.402). Whole, those pairs carry detail the initial
    # student does not predict from (z, c) (latent MSE 0.68) and cost FID; pooled, only the layout
    # is pulled and VSD keeps the detail. Not measured before: the pooled pairs were the initial student's own
    # (rp481m-lp2), whose layouts are the ones that lose recall. Weight 1: the layout pull must be strong enough to
    # move layouts that VSD below t = 300 does not. Measured (2000 updates, seeds 1 and 2): test FID 133.44, recall
    # 0.117, coverage 0.037, worse than the choice on every metric (docs/method.md).
    "full-ttur5-guid2-1-x0err-tmax299-fst299-lp2-reg1": {**BEST, "vsd_t_max": 299, "fake_score_t_max": 299,
                                                         "regression_weight": 1.0, "regression_pool": 2},
    # A larger global batch (32 instead of the CLI's 8, set in BATCH_SIZES): the fake score sees four times as many of
    # the student's samples per update, so its model of the student's distribution is less noisy.
    "full-ttur5-guid2-1-x0err-b32": BEST,
    # f-distill's mode-covering weights, from the same discriminator head and no generator term
    "full-ttur5-guid2-1-x0err-js": {**BEST, "divergence": "js"},
    "full-ttur5-guid2-1-x0err-fkl": {**BEST, "divergence": "forward_kl"},
    # Quickstart candidates (a run of about 150 updates to fit its time): twice the learning rates, and an EMA
    # short enough not to keep a fifth of the initial student after 150 updates (0.99 ** 150 = 0.22).
    **{f"full-ttur{n}-guid2-1-x0err-lr2-ema95": {"fake_score": "full", "fake_score_lr": 2e-4, "fake_score_updates": n,
                                                 "guidance_scale": 2.0, "fake_guidance_scale": 1.0,
                                                 "vsd_weighting": "x0_error", "student_lr": 2e-4, "ema_decay": 0.95}
       for n in (3, 5)},
    # Equal to full-ttur5-guid2-1-x0err at 150 updates (measured): the EMA's warm-up decay (1 + s) / (10 + s) is
    # below 0.95 until update 171, so ema_decay only matters in longer runs.
    "full-ttur5-guid2-1-x0err-ema95": {**BEST, "ema_decay": 0.95},
    # TiUE's own diversity term swept (docs/method.md, "Training", the KL regulariser): the base's lambda_kl is 0.1;
    # 0 ablates it, 1 and 10 weight it up to see whether it buys back recall.
    **{f"full-ttur5-guid2-1-x0err-kl{w}": {**BEST, "lambda_kl": float(w)} for w in ("0", "1", "10")},
    # K transfer with a student warm-up: a new fake score starts as the teacher's copy, far from the transferred
    # student's distribution, so its first VSD gradients are off; the student's learning rate ramps up over
    # 100 updates while the fake score (5 updates per student update) catches up.
    "full-ttur5-guid2-1-x0err-warm100": {**BEST, "student_warmup_steps": 100},
    # Trailing timesteps (999, 749, 499, 249): the encoder runs at t = 999, where z is pure noise as the schedule says;
    # leading ones start at 751 from pure noise, which Lin et al. (WACV 2024) show narrows what a sampler can reach.
    "full-ttur5-guid2-1-x0err-trailing": {**BEST, "spacing": "trailing"},
    # K = 8 transfer that keeps the K = 4 student's first timestep (751, where the encoder runs once) and its four
    # decoder timesteps, adding four between them; leading spacing would move the encoder to 876.
    "k8-from751": {**BEST, "num_steps": 8, "spacing": "custom", "timesteps": (751, 626, 501, 376, 251, 167, 84, 1)},
    "sb-paper": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0},
    # SwiftBrush's map run at an earlier timestep than 999. At t = 999 the 1-step map divides the teacher's noise
    # error by sqrt(alpha_bar) = 0.07, and the initial student scores validation FID 281 and never recovers; TiUE's
    # encoder, also fed pure noise, runs at 751 (sqrt(alpha_bar) = 0.24). Same pure-noise input, same export.
    **{f"sb-x0err-t{t}": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0, "vsd_weighting": "x0_error",
                          "spacing": "custom", "timesteps": (t,)} for t in (851, 751, 501)},
    # The paper's SwiftBrush recipe (its best alignment so far) plus the normalisation that helped TiUE most.
    "sb-x0err": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0, "vsd_weighting": "x0_error"},
    # SwiftBrush's best recipe so far plus the same regression pairs (the teacher's 50 steps at guidance 2).
    **{f"sb-x0err-reg{w}": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0, "vsd_weighting": "x0_error",
                            "regression_weight": float(w), "regression_guidance_scale": 2.0} for w in ("0.25", "1", "4")},
    **{f"sb-full-ttur5-guid2-1-x0err-reg{w}": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0, **BEST,
                                               "regression_weight": float(w)} for w in ("0.25", "1", "4")},
    "sb-full-ttur5-guid2-1": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0, "fake_score": "full",
                              "fake_score_lr": 1e-4, "fake_score_updates": 5, "guidance_scale": 2.0, "fake_guidance_scale": 1.0},
    "sb-full-ttur5-guid2-1-x0err": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0, **BEST},
}
# K transfer from the study's choice (D5 asks for the best K = 4 student; k8-from751 and the source recipe's own K = 2
# start from a 300-update one): the choice's own losses, read from its recipe, on the two plans measured there, K = 2
# leading (--num-steps 2) and K = 8 from 751. Fixed before any run: 300 updates, seeds 1 and 2, both from the choice's
# seed-3 run (a new seed of that recipe, scored on test once like its seeds 1 and 2, because the earlier sessions'
# exports are not kept). Named without the `pf8192-` prefix: their student is the transferred one, not a pair fit.
_CHOICE = RECIPES["pf8192-full-ttur5-guid2-1-x0err-tmax299-fst299-reg1-pairs8192"]
RECIPES["full-ttur5-guid2-1-x0err-tmax299-fst299-reg1-pairs8192"] = dict(_CHOICE)
RECIPES["k8-from751-tmax299-fst299-reg1-pairs8192"] = {**_CHOICE, **{key: RECIPES["k8-from751"][key] for key in (
    "num_steps", "spacing", "timesteps")}}
# Recipes whose student starts from a regression-only student of the same seed (benchmarks/fashion/pair_fit.py, run
# `pair-fit-<pairs>@<updates>-s<seed>`) instead of the teacher's UNet: a study setting, like the batch, read from the
# name's `pf8192-` prefix so that a recipe cannot say one start and get another.
STARTS: dict[str, str] = {name: "pair-fit-8192@4000" for name in RECIPES if name.startswith("pf8192-")}
