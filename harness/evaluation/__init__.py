"""Scoring primitives: model-independent functions the evaluation runner combines.

- gsm8k:          extract_answer, answers_match, gold_answer, score_gsm8k (patterns in gsm8k_extraction.yaml)
- gsm8k_lm_eval:  lm_eval_gsm8k_task_yaml, run_lm_eval_gsm8k (community 5-shot protocol, offline)
- passk:          pass_at_k (unbiased, Chen et al. 2021)
- code_clean:     clean_completion, humaneval_program (rules in code_clean.yaml)
- sandbox:        run_tests, run_many_tests, ScoringJob (scoring: a pass is proof the tests completed),
                  run_program, run_many, SandboxLimits, ExecResult (confined child processes)
- humaneval:      evaluate_humaneval, load_humaneval_problems
- judges:         RougeJudge, HFModelJudge, OpenAICompatibleJudge, parse_verdict (prompt in judge_prompts.yaml)
- win_rate:       pairwise_win_rate
- rouge:          rouge_scores, multi_ref_rouge
- diversity:      distinct_n, self_bleu, bleu, mean_length, diversity_metrics
"""

from harness.evaluation.code_clean import clean_completion, extract_fenced_code, humaneval_program, truncate_at_stops
from harness.evaluation.diversity import bleu, distinct_n, diversity_metrics, mean_length, self_bleu
from harness.evaluation.gsm8k import (
    answers_match,
    extract_answer,
    extract_answer_with_rule,
    gold_answer,
    score_gsm8k,
)
from harness.evaluation.gsm8k_lm_eval import lm_eval_gsm8k_task_yaml, run_lm_eval_gsm8k
from harness.evaluation.humaneval import evaluate_humaneval, load_humaneval_problems
from harness.evaluation.judges import (
    HFModelJudge,
    Judge,
    JudgeError,
    OpenAICompatibleJudge,
    RougeJudge,
    Verdict,
    parse_verdict,
)
from harness.evaluation.passk import mean_pass_at_k, pass_at_k
from harness.evaluation.rouge import multi_ref_rouge, rouge_scores
from harness.evaluation.sandbox import (
    ExecResult, SandboxLimits, ScoringJob, run_many, run_many_tests, run_program, run_tests, sandbox_capabilities,
)
from harness.evaluation.win_rate import outcome_for_student, pairwise_win_rate

__all__ = [
    "answers_match", "extract_answer", "extract_answer_with_rule", "gold_answer", "score_gsm8k",
    "lm_eval_gsm8k_task_yaml", "run_lm_eval_gsm8k",
    "pass_at_k", "mean_pass_at_k",
    "clean_completion", "extract_fenced_code", "humaneval_program", "truncate_at_stops",
    "ExecResult", "SandboxLimits", "ScoringJob", "run_many", "run_many_tests", "run_program", "run_tests",
    "sandbox_capabilities",
    "evaluate_humaneval", "load_humaneval_problems",
    "HFModelJudge", "Judge", "JudgeError", "OpenAICompatibleJudge", "RougeJudge", "Verdict", "parse_verdict",
    "pairwise_win_rate", "outcome_for_student",
    "multi_ref_rouge", "rouge_scores",
    "bleu", "distinct_n", "diversity_metrics", "mean_length", "self_bleu",
]
