from vivace.data.names import IMAGENETTE_NAMES, IMAGEWOOF_NAMES, display_name, display_names


def test_known_ids_get_human_names():
    assert display_name("n01440764") == "tench"
    assert display_name("n02102040") == "English springer"
    assert display_name("n02111889") == "Samoyed"


def test_other_labels_are_kept():
    assert display_names(["cat", "n01440764", "n99999999"]) == ["cat", "tench", "n99999999"]


def test_each_dataset_has_ten_distinct_classes():
    for table in (IMAGENETTE_NAMES, IMAGEWOOF_NAMES):
        assert len(table) == 10 and len(set(table.values())) == 10
    assert not set(IMAGENETTE_NAMES) & set(IMAGEWOOF_NAMES)


def test_named_datasets_carry_their_class_names():
    from vivace.data.datasets import DATASETS
    assert DATASETS["imagenette-160"].class_names["n01440764"] == "tench"
    assert DATASETS["imagewoof"].class_names["n02111889"] == "Samoyed"
    assert all(info.class_names is not None for info in DATASETS.values())
