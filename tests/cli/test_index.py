"""`lit index`: the codebook policy and its small-set warning."""



def test_index_uses_the_codebook_policy_and_warns_on_small_sets(collection):
    from lit.features import FeatureStore
    from lit.pipeline import codebook_size

    with FeatureStore(collection["feats"]) as st:
        n = int(st.h5.attrs["num_features"])
    proc = collection["index_log"]
    assert f"training a codebook of {codebook_size(n)} words on {n} descriptors" in proc.stderr
    assert "warning: the codebook is learned on only" in proc.stderr and "--train-features" in proc.stderr
    assert f"indexed 4 images ({n} descriptors, {codebook_size(n)} words)" in proc.stdout
