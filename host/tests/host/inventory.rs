//! The dashboard's inventory query on both backends: name search without
//! regard to case and with `%`/`_` taken literally, owner/issuer/status
//! filters, retired certificates only when asked for, soonest expiry first,
//! paging with the total, and the weekly expiry counts.

use certplane_host::store::{
    Certificate, CertificateStatus, InventoryFilter, KeySource, NewCertificate, Store,
};
use certplane_testkit::{Backend, TestDb, both_backends, fixtures};

async fn cert(store: &Store, name: &str, issuer: &str, owner: &str) -> Certificate {
    store
        .create_certificate(NewCertificate {
            name: name.to_owned(),
            common_name: format!(
                "{}.example.test",
                name.to_lowercase().replace(['%', '_'], "x")
            ),
            sans: vec![],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer.to_owned(),
            target_id: None,
            renew_before_secs: 86_400,
            owner: Some(owner.to_owned()),
        })
        .await
        .unwrap()
}

fn names(rows: &[Certificate]) -> Vec<&str> {
    rows.iter().map(|c| c.name.as_str()).collect()
}

async fn inventory_filters_pages_and_counts(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    let a = fixtures::issuer(&store).await;
    let other = fixtures::issuer(&store).await;
    let alpha = cert(&store, "web-Alpha", &a.id, "team-a").await;
    let beta = cert(&store, "web_beta", &a.id, "team-b").await;
    cert(&store, "50%off", &other.id, "team-a").await;
    let gone = cert(&store, "web-gone", &a.id, "team-a").await;
    fixtures::version_ending_in(&store, &alpha.id, "01", 10).await;
    fixtures::version_ending_in(&store, &beta.id, "02", 3).await;
    fixtures::version_ending_in(&store, &gone.id, "03", 1).await;
    store.retire_certificate(&gone.id).await.unwrap();

    let page = |filter: InventoryFilter| {
        let store = store.clone();
        async move { store.inventory_page(&filter, 0, 50).await.unwrap() }
    };
    let all = page(InventoryFilter::default()).await;
    assert_eq!(
        names(&all.0),
        ["web_beta", "web-Alpha", "50%off"],
        "soonest first, never issued last, retired hidden"
    );
    assert_eq!(all.1, 3);

    let search = |s: &str| InventoryFilter {
        search: Some(s.into()),
        ..Default::default()
    };
    assert_eq!(
        names(&page(search("WEB")).await.0),
        ["web_beta", "web-Alpha"]
    );
    assert_eq!(
        names(&page(search("_")).await.0),
        ["web_beta"],
        "`_` is literal"
    );
    assert_eq!(
        names(&page(search("%")).await.0),
        ["50%off"],
        "`%` is literal"
    );
    assert_eq!(
        names(&page(search("alpha.example")).await.0),
        ["web-Alpha"],
        "common name"
    );

    let owner = InventoryFilter {
        owner: Some("team-a".into()),
        ..Default::default()
    };
    assert_eq!(names(&page(owner).await.0), ["web-Alpha", "50%off"]);
    let issuer = InventoryFilter {
        issuer_id: Some(other.id.clone()),
        ..Default::default()
    };
    assert_eq!(names(&page(issuer).await.0), ["50%off"]);
    let retired = InventoryFilter {
        status: Some(CertificateStatus::Retired),
        ..Default::default()
    };
    assert_eq!(names(&page(retired).await.0), ["web-gone"]);

    let (second, total) = store
        .inventory_page(&InventoryFilter::default(), 1, 1)
        .await
        .unwrap();
    assert_eq!((names(&second), total), (vec!["web-Alpha"], 3));

    let weeks = store
        .expiry_by_week(&InventoryFilter::default(), 4)
        .await
        .unwrap();
    assert_eq!(
        weeks,
        [1, 1, 0, 0],
        "3 days: week 1; 10 days: week 2; retired not counted"
    );
    let weeks = store
        .expiry_by_week(
            &InventoryFilter {
                owner: Some("team-b".into()),
                ..Default::default()
            },
            2,
        )
        .await
        .unwrap();
    assert_eq!(weeks, [1, 0]);
}

both_backends!(inventory_filters_pages_and_counts);
