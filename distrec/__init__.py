"""distrec: distributed fine-tuning of LLM recommenders (ReLLaX, CFT, EIMF) on Ray Train + DeepSpeed.

Package map (data flows top to bottom):

    data/        raw datasets -> canonical Arrow tables -> samples -> prompts
    retrieval/   SUBR: semantic user-behaviour retrieval (faiss)
    interests/   EIMF: multi-interest backbones and LLM-derived interests
    model/       backbone LLM, adapters (LoRA, CFLoRA), soft prompts
    objectives/  losses (CTR yes/no, counterfactual fine-tuning)
    train/       Ray Train launcher, the training loop, the DeepSpeed strategy
    eval/        metrics, evaluation runs, reports
"""

__version__ = "0.1.0"
